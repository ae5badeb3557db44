"""Only the optional C helper lives here; pyproject.toml holds the package metadata.

``sensor._fast._fastpath`` is optional: when it cannot be compiled (no compiler, no Python
headers) installation still succeeds and ``sensor._fast`` uses its pure-Python fallback.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the package works without the extension."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - e.g. no compiler at all
            self.warn(f"sensor._fast: C helper not built ({exc}); using the pure-Python fallback")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self.warn(f"{ext.name}: not built ({exc}); using the pure-Python fallback")


setup(
    ext_modules=[Extension("sensor._fast._fastpath", ["sensor/_fast/fastpath.c"],
                           extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wno-missing-braces"],
                           optional=True)],
    cmdclass={"build_ext": OptionalBuildExt},
)
