from django.urls import path

from apikeys import api

urlpatterns = [
    path("keys", api.KeyListCreateApi.as_view(), name="keys"),
    path("keys/<int:key_id>", api.KeyDetailApi.as_view(), name="key-detail"),
    path("keys/<int:key_id>/roll", api.KeyRollApi.as_view(), name="key-roll"),
    path("keys/<int:key_id>/usage", api.KeyUsageApi.as_view(), name="key-usage"),
]
