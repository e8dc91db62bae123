"""The relay's allow-list: only these routes reach an upstream (included under /api/v1/).

Path parameters use the `path` converter so that a parameter holding an encoded or literal `/`
still reaches the view, which answers 400 `invalid_path` (rather than the resolver's 404).
"""

from django.urls import path, re_path

from relay import api, timepoint_api

urlpatterns = [
    path("credits/balance", api.credits_balance, name="relay-credits-balance"),
    path("credits/history", api.credits_history, name="relay-credits-history"),
    path("credits/costs", api.credits_costs, name="relay-credits-costs"),
    path("generate", api.generate, name="relay-generate"),
    path("generate/stream", api.generate_stream, name="relay-generate-stream"),
    path("generate/async", timepoint_api.generate_async, name="relay-generate-async"),
    path("timepoints/mine", timepoint_api.timepoint_list_mine, name="relay-timepoint-list-mine"),
    path(
        "timepoints/slug/<path:slug>",
        timepoint_api.timepoint_by_slug,
        name="relay-timepoint-by-slug",
    ),
    path(
        "timepoints/<path:id>/characters",
        timepoint_api.timepoint_characters,
        name="relay-timepoint-characters",
    ),
    path(
        "timepoints/<path:id>/visibility",
        api.timepoint_visibility,
        name="relay-timepoint-visibility",
    ),
    # GET (read) and DELETE. Flash's /tdf, /temporal/… and /interactions/… routes are not
    # relayed: they check neither owner nor visibility (pitfall 14).
    path("timepoints/<path:id>", timepoint_api.timepoint_detail, name="relay-timepoint-detail"),
    path("moments", api.moment_list, name="relay-moment-list"),
    path("moments/<path:path>", api.moment_detail, name="relay-moment-detail"),
    path("browse", api.browse_root, name="relay-browse"),
    path("browse/<path:path>", api.browse_path, name="relay-browse-path"),
    path("today", api.today, name="relay-today"),
    path("random", api.random_moment, name="relay-random"),
    path("search", api.search, name="relay-search"),
    path("graph/neighbors/<path:path>", api.neighbors, name="relay-neighbors"),
    path("stats", api.stats, name="relay-stats"),
    # What the converters above cannot match (a decoded CR/LF: `.` stops at a newline) is still
    # a bad path parameter, not an unknown route.
    re_path(
        r"^(?:moments|browse|graph/neighbors|timepoints)/(?s:.*)\Z",
        api.invalid_path,
        name="relay-invalid-path",
    ),
    path(
        "staff/credits/reconcile/<int:user_id>",
        api.CreditsReconcileApi.as_view(),
        name="relay-credits-reconcile",
    ),
]
