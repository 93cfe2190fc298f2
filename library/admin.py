from django.contrib import admin

from library.models import Example, Rejection, Tag


@admin.register(Example)
class ExampleAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "source_url", "version", "is_latest", "status", "approved_at")
    list_filter = ("status", "is_latest", "example_type", "gpu_required")
    search_fields = ("title", "summary", "source_url")
    raw_id_fields = ("run", "iteration", "approved_by", "retracted_by")


admin.site.register(Tag)
admin.site.register(Rejection)
