"""The hourly schedule of library health checks (library/health.py `health_schedule`)."""

from django.db import migrations


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="check library health",
        defaults={"func": "library.tasks.schedule_health_checks", "schedule_type": "H", "repeats": -1},
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="check library health").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("library", "0008_example_check"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
