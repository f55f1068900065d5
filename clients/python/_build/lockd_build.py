"""An in-tree PEP 517 build backend, standard library only, so that
`pip install ./clients/python` needs nothing from a package index (not even
setuptools or wheel). It builds a pure-Python wheel of the lockd package
and an sdist of this folder."""

import base64
import hashlib
import os
import tarfile
import zipfile

NAME = "lockd"
VERSION = "0.1.0"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST_INFO = "%s-%s.dist-info" % (NAME, VERSION)

METADATA = """Metadata-Version: 2.1
Name: lockd
Version: %s
Summary: A client for lockd, the distributed lock service (standard library only).
Requires-Python: >=3.8
""" % VERSION

WHEEL = """Wheel-Version: 1.0
Generator: lockd_build
Root-Is-Purelib: true
Tag: py3-none-any
"""


def _files():
    pkg = os.path.join(HERE, NAME)
    for name in sorted(os.listdir(pkg)):
        if name.endswith(".py"):
            yield "%s/%s" % (NAME, name), os.path.join(pkg, name)


def _record_line(arc, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (arc, digest, len(data))


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "%s-%s-py3-none-any.whl" % (NAME, VERSION)
    records = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as whl:
        entries = [(arc, open(path, "rb").read()) for arc, path in _files()]
        entries.append((DIST_INFO + "/METADATA", METADATA.encode()))
        entries.append((DIST_INFO + "/WHEEL", WHEEL.encode()))
        for arc, data in entries:
            whl.writestr(arc, data)
            records.append(_record_line(arc, data))
        records.append(DIST_INFO + "/RECORD,,")
        whl.writestr(DIST_INFO + "/RECORD", "\n".join(records) + "\n")
    return name


def build_sdist(sdist_directory, config_settings=None):
    base = "%s-%s" % (NAME, VERSION)
    name = base + ".tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as tar:
        for rel in ["pyproject.toml", "README.md", "_build/lockd_build.py"] + [a for a, _ in _files()]:
            tar.add(os.path.join(HERE, rel), arcname=base + "/" + rel)
        info = os.path.join(sdist_directory, "PKG-INFO")
        with open(info, "w") as f:
            f.write(METADATA)
        tar.add(info, arcname=base + "/PKG-INFO")
        os.remove(info)
    return name
