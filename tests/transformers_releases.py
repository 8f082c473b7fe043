"""The transformers releases the project is proven on (the matrix), and the venv each runs in.

Each line is a release and the sha256 of its source distribution on PyPI (`transformers-<release>.tar.gz`), the archive
transformers' own model tests are fetched from at test time (tests/transformers_sdist.py; the hash read off PyPI's
index). Adding a release to the matrix is one line here: `pip download --no-binary :all: --no-deps
transformers==<release>`, then `sha256sum transformers-<release>.tar.gz`, checked against the sha256 that PyPI lists.
"""

from pathlib import Path

from isolated_venv import cached_venv

TRANSFORMERS_RELEASES = {
    "5.16.1": "17b0eac726ddc55e84ac58946063e0c6d37fd000c456b581f050ea0f4e822869",
    "5.17.0": "a153be279169b55b92d8000bf4af294aed684503d091cca7804da2dd8a9de000",
    "5.19.0": "87f38dd25e4521151b97e94520ac457f44a0ae8a8358a5b112daff6c64a822d6",
    "5.20.2": "080871e061546d720be57f5846fce426f46b44d61574907cc7404c2cba49d180",
    "5.21.1": "65e82dfbe8d0d0d6d09d402dca28e60b3f483beadbb7bdd259ea0e33a04e2efa",
    "5.22.2": "55f57e5cbd7c0b500b7a706daa0ecd76567b56ca139e6e02ef0bba0437e3a763",
    "5.23.0": "19d647a4d5d903a7c644ca5cde2d86efc3dde7d8c687ae7988806ff2205efa71",  # the dev venv's (pyproject's dev extra)
    "5.24.0": "906cb8c3cb2123575e263962586a4d21a979ce97feeb95fe6aaf66fe6ae88bf3",
}
# Besides torch and transformers, what loading a folder and its processor needs on a user's machine.
LOADING_REQUIREMENTS = ["pillow", "jinja2"]


def release_python(release: str) -> Path:
    """The python of the release's venv: torch (CPU), that transformers, LOADING_REQUIREMENTS; not this package."""
    requirements = [f"transformers=={release}", *LOADING_REQUIREMENTS]
    return cached_venv(f"transformers-{release}", requirements, share_torch=True)
