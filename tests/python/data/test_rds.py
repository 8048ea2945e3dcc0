"""qat.data.rds and qat.data.austen against R itself (Rscript writes the files and prints the
novels; skipped without R, which Debian's r-cran-janeaustenr pulls in)."""

import math
import shutil
import subprocess

import pytest

from qat.data import austen
from qat.data.rds import RDataError, RObject, read_rds, read_rds_bytes

RSCRIPT = shutil.which("Rscript")
needs_r = pytest.mark.skipif(RSCRIPT is None, reason="Rscript (r-base-core) is not installed")

R_VALUE = r'''list(i=c(1L, NA, -5L, 2147483647L), d=c(1.5, NA, NaN, Inf, -Inf, 1e300), l=c(TRUE, NA, FALSE),
  s=c("a", NA, "caf\u00e9 \u4e2d", ""), n=NULL, nested=list(1L, list(z="q")), f=factor(c("lo", "hi", "lo")),
  df=data.frame(a=1:3, b=c("x", "y", "z")), seq=1:10, e=character(0), lat=iconv("na\u00efve", "UTF-8", "latin1"))'''


def check(d):
    assert d["i"] == [1, None, -5, 2**31 - 1]
    dd = d["d"]
    assert dd[0] == 1.5 and dd[1] is None and math.isnan(dd[2]) and dd[3:] == [math.inf, -math.inf, 1e300]
    assert d["l"] == [True, None, False]
    assert d["s"] == ["a", None, "caf\u00e9 \u4e2d", ""] and d["lat"] == ["na\u00efve"]
    assert d["n"] is None and d["e"] == []
    assert d["nested"][0] == [1] and d["nested"][1].as_dict() == {"z": ["q"]}
    f = d["f"]
    assert isinstance(f, RObject) and f.value == [2, 1, 2] and f.attributes == {"levels": ["hi", "lo"], "class": ["factor"]}
    df = d["df"]
    assert df.as_dict() == {"a": [1, 2, 3], "b": ["x", "y", "z"]} and df.attributes["class"] == ["data.frame"]
    assert d["seq"] == list(range(1, 11))


@needs_r
@pytest.mark.parametrize("args", ["compress=FALSE, version=2", "compress=FALSE, version=3", "compress=TRUE",
                                  "compress='xz'", "compress='bzip2'"])
def test_read_rds_matches_r(tmp_path, args):
    path = tmp_path / "x.rds"
    subprocess.run([RSCRIPT, "-e", f"saveRDS({R_VALUE}, '{path}', {args})"], check=True)
    check(read_rds(path).as_dict())


def test_malformed_input():
    with pytest.raises(RDataError, match="XDR"):
        read_rds_bytes(b"A\n\x00\x00\x00\x03")
    with pytest.raises(RDataError, match="truncated"):
        read_rds_bytes(b"X\n\x00\x00\x00\x02\x00\x04\x02\x02\x00\x02\x03\x00\x00\x00\x00\x10\x00\x00\x00\x05")
    with pytest.raises(RDataError, match="version 7"):
        read_rds_bytes(b"X\n\x00\x00\x00\x07\x00\x04\x02\x02\x00\x02\x03\x00")


@needs_r
def test_austen_novels_match_r():
    try:
        texts = austen.novels()
    except austen.AustenNotFoundError as e:
        pytest.skip(str(e))
    assert list(texts) == list(austen.NOVELS)
    out = subprocess.run([RSCRIPT, "-e", "writeLines(janeaustenr::persuasion, useBytes=TRUE)"], check=True,
                         capture_output=True).stdout.decode("utf-8")
    assert texts["persuasion"] + "\n" == out
    assert texts["prideprejudice"].startswith("PRIDE AND PREJUDICE\n\nBy Jane Austen")
    assert 3_000_000 < sum(len(t) for t in texts.values()) < 5_000_000
    with pytest.raises(ValueError, match="unknown novel"):
        austen.novel("ulysses")


def test_missing_package_is_a_clear_error(tmp_path):
    with pytest.raises(austen.AustenNotFoundError, match="r-cran-janeaustenr"):
        austen.find_data(tmp_path)
