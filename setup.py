"""Declares the optional C kernel only; pyproject.toml holds all the metadata.

`optional=True`: a machine without a C compiler or Python headers still installs tidelog, and
tidelog.wire.batch then runs its numpy path (it checks `NATIVE` at import).
"""

from setuptools import Extension, setup

NATIVE_DIR = "src/tidelog/native"

setup(
    ext_modules=[
        Extension(
            "tidelog._stamp",
            sources=[f"{NATIVE_DIR}/stamp.c"],
            depends=[f"{NATIVE_DIR}/xxhash.h"],
            include_dirs=[NATIVE_DIR],
            # Matches the Py_LIMITED_API define in stamp.c: one abi3 binary for 3.11 and later.
            py_limited_api=True,
            optional=True,
        )
    ],
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
