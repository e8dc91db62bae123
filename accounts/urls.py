from django.urls import URLPattern, path

from accounts import api

urlpatterns: list[URLPattern] = [
    path("auth/login", api.AuthLoginApi.as_view(), name="auth-login"),
    path("auth/me", api.AuthMeApi.as_view(), name="auth-me"),
    path("auth/logout", api.AuthLogoutApi.as_view(), name="auth-logout"),
    path("users/me/export", api.UserExportApi.as_view(), name="users-me-export"),
]
