from django.contrib import admin

from library.api_auth import api_token_revoke
from library.models import ApiToken, Example, ExampleCheck, Rejection, Tag
from library.services import example_embeddings_refresh

# What an example's embedding is made of (Example.semantic_text).
EMBEDDED_FIELDS = {"title", "summary", "tags"}


@admin.register(Example)
class ExampleAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "source_url", "version", "is_latest", "status", "approved_at")
    list_filter = ("status", "is_latest", "example_type", "gpu_required")
    search_fields = ("title", "summary", "source_url")
    raw_id_fields = ("run", "iteration", "approved_by", "retracted_by")

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)  # the tags are saved here, after the example
        if not change or EMBEDDED_FIELDS & set(form.changed_data):
            example_embeddings_refresh(example_ids=[form.instance.pk])


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    # A tag's name is part of the embedded text of each example that has it: renaming or deleting the tag
    # changes all of theirs.
    search_fields = ("name",)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and "name" in form.changed_data:
            example_embeddings_refresh(example_ids=obj.examples.values_list("pk", flat=True))

    def delete_model(self, request, obj):
        ids = list(obj.examples.values_list("pk", flat=True))
        super().delete_model(request, obj)
        example_embeddings_refresh(example_ids=ids)

    def delete_queryset(self, request, queryset):
        ids = list(Example.objects.filter(tags__in=queryset).values_list("pk", flat=True))
        super().delete_queryset(request, queryset)
        example_embeddings_refresh(example_ids=ids)


admin.site.register(Rejection)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    # Tokens are made with `manage.py api_token create`, which shows the key once; here they are only
    # looked at and revoked (the action), never un-revoked.
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "user__username", "prefix")
    readonly_fields = ("user", "name", "prefix", "created_at", "last_used_at", "revoked_at")

    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        revoked = 0
        for token in queryset.filter(revoked_at=None):
            api_token_revoke(token=token)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} token(s).")


@admin.register(ExampleCheck)
class ExampleCheckAdmin(admin.ModelAdmin):
    list_display = ("id", "example", "status", "reason", "started_at", "finished_at")
    list_filter = ("status",)
    raw_id_fields = ("example", "repair_run")
