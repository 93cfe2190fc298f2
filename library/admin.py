from django.contrib import admin

from library.api_auth import api_token_revoke
from library.models import ApiToken, Example, Rejection, Tag


@admin.register(Example)
class ExampleAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "source_url", "version", "is_latest", "status", "approved_at")
    list_filter = ("status", "is_latest", "example_type", "gpu_required")
    search_fields = ("title", "summary", "source_url")
    raw_id_fields = ("run", "iteration", "approved_by", "retracted_by")


admin.site.register(Tag)
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


import library.review_admin  # noqa: E402,F401  (the review app's admin)
