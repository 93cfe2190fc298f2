"""Search: the embedding column, and on SQLite the FTS5 index kept in step by triggers.

The index holds every example (retracted ones and old versions too): queries join it to the examples
they may show. Triggers keep it in step with every write, whoever makes it (services, admin, shell,
a bulk update), so it never needs a separate call. Postgres searches the table itself (library.search).
"""

from django.db import migrations, models

# What one example contributes to each column. The code column is every file's text, one after another.
_ROW = """
    new.id, new.title, new.summary, new.description,
    (SELECT group_concat(value, char(10)) FROM json_each(new.files)),
    new.source_url || ' ' || new.source_title || ' ' || new.paper_title || ' ' || new.paper_authors,
    (SELECT group_concat(t.name, ' ') FROM library_example_tags et JOIN library_tag t ON t.id = et.tag_id
     WHERE et.example_id = new.id)
"""
_COLUMNS = "rowid, title, summary, description, code, repository, tags"
_TAGS_OF = """(SELECT group_concat(t.name, ' ') FROM library_example_tags et JOIN library_tag t ON t.id = et.tag_id
     WHERE et.example_id = {id})"""

CREATE = [
    # porter: "fitting" finds "fit"; unicode61 splits snake_case identifiers into words, as the query does.
    f"""CREATE VIRTUAL TABLE library_example_fts USING fts5(
        title, summary, description, code, repository, tags, tokenize = 'porter unicode61')""",
    f"INSERT INTO library_example_fts ({_COLUMNS}) SELECT {_ROW.replace('new.', 'library_example.')} FROM library_example",
    f"""CREATE TRIGGER library_example_fts_insert AFTER INSERT ON library_example BEGIN
        INSERT INTO library_example_fts ({_COLUMNS}) VALUES ({_ROW});
    END""",
    f"""CREATE TRIGGER library_example_fts_update AFTER UPDATE OF
        title, summary, description, files, source_url, source_title, paper_title, paper_authors
        ON library_example BEGIN
        DELETE FROM library_example_fts WHERE rowid = old.id;
        INSERT INTO library_example_fts ({_COLUMNS}) VALUES ({_ROW});
    END""",
    """CREATE TRIGGER library_example_fts_delete AFTER DELETE ON library_example BEGIN
        DELETE FROM library_example_fts WHERE rowid = old.id;
    END""",
    f"""CREATE TRIGGER library_example_fts_tag_add AFTER INSERT ON library_example_tags BEGIN
        UPDATE library_example_fts SET tags = {_TAGS_OF.format(id="new.example_id")} WHERE rowid = new.example_id;
    END""",
    f"""CREATE TRIGGER library_example_fts_tag_remove AFTER DELETE ON library_example_tags BEGIN
        UPDATE library_example_fts SET tags = {_TAGS_OF.format(id="old.example_id")} WHERE rowid = old.example_id;
    END""",
    # A renamed tag changes the text of every example that carries it.
    f"""CREATE TRIGGER library_example_fts_tag_rename AFTER UPDATE OF name ON library_tag BEGIN
        UPDATE library_example_fts SET tags = {_TAGS_OF.format(id="library_example_fts.rowid")}
        WHERE rowid IN (SELECT example_id FROM library_example_tags WHERE tag_id = new.id);
    END""",
]
DROP = [
    "DROP TRIGGER IF EXISTS library_example_fts_tag_rename",
    "DROP TRIGGER IF EXISTS library_example_fts_tag_remove",
    "DROP TRIGGER IF EXISTS library_example_fts_tag_add",
    "DROP TRIGGER IF EXISTS library_example_fts_delete",
    "DROP TRIGGER IF EXISTS library_example_fts_update",
    "DROP TRIGGER IF EXISTS library_example_fts_insert",
    "DROP TABLE IF EXISTS library_example_fts",
]


def _run(statements):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor != "sqlite":
            return
        for statement in statements:
            schema_editor.execute(statement, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("library", "0002_api_token"),
    ]

    operations = [
        migrations.AddField(
            model_name="example",
            name="embedding",
            field=models.BinaryField(blank=True, null=True, editable=False),
        ),
        migrations.RunPython(_run(CREATE), _run(DROP), elidable=False),
    ]
