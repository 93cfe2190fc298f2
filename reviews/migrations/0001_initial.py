"""The review models, moved here from the library app: created in Django's state only.

Their tables were made by library migration 0004 and keep their names (`db_table`); library migration 0007
took the models out of the library's state. The content types move with them, so that permissions given on
them and the admin's history stay attached.
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

MOVED = ["answer", "comparison", "question", "review", "reviewitem", "reviewqueue", "scoringform", "skip"]


def move_content_types(apps, schema_editor, old="library", new="reviews"):
    ContentType = apps.get_model("contenttypes", "ContentType")
    # A content type the new app already has (made by an earlier migrate) is left alone.
    taken = ContentType.objects.filter(app_label=new, model__in=MOVED).values_list("model", flat=True)
    ContentType.objects.filter(app_label=old, model__in=MOVED).exclude(model__in=list(taken)).update(app_label=new)


def move_content_types_back(apps, schema_editor):
    move_content_types(apps, schema_editor, old="reviews", new="library")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('library', '0007_reviews_move_to_their_app'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='ScoringForm',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=200, unique=True)),
                        ('description', models.TextField(blank=True)),
                        ('guidelines', models.TextField(blank=True, help_text='Shown beside the form while an expert scores.')),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                    ],
                    options={
                        'db_table': 'library_scoringform',
                        'ordering': ['name'],
                    },
                ),
                migrations.CreateModel(
                    name='ReviewItem',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('locked_until', models.DateTimeField(blank=True, null=True)),
                        ('example', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='review_items', to='library.example')),
                        ('locked_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'library_reviewitem',
                        'ordering': ['id'],
                    },
                ),
                migrations.CreateModel(
                    name='Review',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('submitted_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('expert', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='reviews', to=settings.AUTH_USER_MODEL)),
                        ('item', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='reviews', to='reviews.reviewitem')),
                    ],
                    options={
                        'db_table': 'library_review',
                        'ordering': ['submitted_at', 'id'],
                    },
                ),
                migrations.CreateModel(
                    name='ReviewQueue',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=200)),
                        ('scores_needed', models.PositiveSmallIntegerField(default=2)),
                        ('saved_search', models.JSONField(blank=True, default=dict)),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('created_by', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('experts', models.ManyToManyField(related_name='review_queues', to=settings.AUTH_USER_MODEL)),
                        ('form', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='queues', to='reviews.scoringform')),
                    ],
                    options={
                        'db_table': 'library_reviewqueue',
                        'ordering': ['-created_at', '-id'],
                    },
                ),
                migrations.AddField(
                    model_name='reviewitem',
                    name='queue',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='items', to='reviews.reviewqueue'),
                ),
                migrations.CreateModel(
                    name='Question',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('order', models.PositiveIntegerField(default=0)),
                        ('key', models.SlugField(help_text='Column name in the CSV export.', max_length=60)),
                        ('text', models.CharField(max_length=500)),
                        ('help_text', models.TextField(blank=True)),
                        ('kind', models.CharField(choices=[('rating', 'Rating 1–5'), ('yes_no', 'Yes or no'), ('single', 'One choice'), ('multiple', 'Several choices'), ('text', 'Free text')], max_length=20)),
                        ('required', models.BooleanField(default=True)),
                        ('choices', models.JSONField(blank=True, default=list, help_text='For choice questions: ["a", "b", ...]')),
                        ('suggest_from', models.CharField(blank=True, choices=[('', 'No suggestion'), ('runs', 'Runs (measured)'), ('faithful', 'Faithful (judge)'), ('accurate', 'Accurate (judge)'), ('complete', 'Complete (judge)')], default='', max_length=20)),
                        ('form', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='questions', to='reviews.scoringform')),
                    ],
                    options={
                        'db_table': 'library_question',
                        'ordering': ['form', 'order', 'id'],
                    },
                ),
                migrations.CreateModel(
                    name='Skip',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('skipped_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('expert', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('item', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='skips', to='reviews.reviewitem')),
                    ],
                    options={
                        'db_table': 'library_skip',
                    },
                ),
                migrations.CreateModel(
                    name='Comparison',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('choice', models.CharField(choices=[('first', 'First'), ('second', 'Second'), ('tie', 'Tie')], max_length=10)),
                        ('reason', models.TextField()),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('expert', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='comparisons', to=settings.AUTH_USER_MODEL)),
                        ('first', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='library.example')),
                        ('second', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='library.example')),
                        ('shown_left', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='library.example')),
                    ],
                    options={
                        'db_table': 'library_comparison',
                        'ordering': ['-created_at'],
                        'constraints': [models.UniqueConstraint(fields=('expert', 'first', 'second'), name='one_comparison_per_expert_pair'), models.CheckConstraint(condition=models.Q(('first__lt', models.F('second'))), name='comparison_pair_ordered')],
                    },
                ),
                migrations.CreateModel(
                    name='Answer',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('value', models.JSONField(null=True)),
                        ('suggested', models.JSONField(null=True)),
                        ('changed', models.BooleanField(default=False)),
                        ('question', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='answers', to='reviews.question')),
                        ('review', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='answers', to='reviews.review')),
                    ],
                    options={
                        'db_table': 'library_answer',
                        'ordering': ['review', 'question__order', 'question_id'],
                        'constraints': [models.UniqueConstraint(fields=('review', 'question'), name='one_answer_per_question')],
                    },
                ),
                migrations.AddConstraint(
                    model_name='review',
                    constraint=models.UniqueConstraint(fields=('item', 'expert'), name='one_review_per_expert_item'),
                ),
                migrations.AddConstraint(
                    model_name='reviewitem',
                    constraint=models.UniqueConstraint(fields=('queue', 'example'), name='unique_example_per_queue'),
                ),
                migrations.AddConstraint(
                    model_name='question',
                    constraint=models.UniqueConstraint(fields=('form', 'key'), name='unique_question_key_per_form'),
                ),
                migrations.AddConstraint(
                    model_name='skip',
                    constraint=models.UniqueConstraint(fields=('item', 'expert'), name='one_skip_per_expert_item'),
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_types, move_content_types_back),
    ]
