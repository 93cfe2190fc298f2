"""The review models move to the `reviews` app (its migration 0001): they leave the library's state only.

Their tables stay as they are, under their `library_*` names (each model's `db_table` keeps them): no row
is copied, and a database that holds reviews keeps every one.
"""

from django.db import migrations

# Children before their parents, so that no model left in the state points to one that is gone.
MOVED = ["Answer", "Skip", "Review", "ReviewItem", "ReviewQueue", "Question", "ScoringForm", "Comparison"]


class Migration(migrations.Migration):
    dependencies = [("library", "0006_example_json_fields_blank")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name=name) for name in MOVED],
            database_operations=[],
        )
    ]
