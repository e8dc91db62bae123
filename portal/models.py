"""The portal owns no models (see the package docstring).

This module exists only so Django sends the portal's `post_migrate` signal (it skips apps without a
models module), which creates the staff groups after every app's permissions exist.
"""
