"""Demos that run an exported artifact outside Python: golden vectors for the Kotlin core of
``android-demo/`` and the browser demo served by ``edgederm serve-demo``."""
