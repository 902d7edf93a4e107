"""The gallery back end: index, order, paging, search, infotext from PNG/JPEG, thumbnails, path safety."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from modules.services import gallery as gallery_module
from modules.services.gallery import (
    Gallery,
    GalleryPathError,
    GalleryQuery,
    is_inside,
)
from modules.services.images import decode_user_comment

BASE_NS = 1_700_000_000 * 10**9


def infotext(prompt: str, negative: str = "", seed: int = 1, sampler: str = "Euler a",
             model: str = "v1-5", size: str = "64x64") -> str:
    neg = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt}{neg}\nSteps: 20, Sampler: {sampler}, CFG scale: 7, Seed: {seed}, Size: {size}, Model: {model}"


def write_png(path: Path, text: str | None, mtime_s: int = 0, color: str = "red",
              size: tuple[int, int] = (32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    Image.new("RGB", size, color).save(path, format="PNG", pnginfo=info)
    os.utime(path, ns=(BASE_NS + mtime_s * 10**9, BASE_NS + mtime_s * 10**9))
    return path


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    folder = tmp_path / "outputs"
    folder.mkdir()
    return folder


@pytest.fixture
def make_gallery(tmp_path: Path, outputs: Path):
    made: list[Gallery] = []

    def make(page_size: int = 48) -> Gallery:
        made.append(Gallery(outputs, tmp_path / "cache", page_size=page_size))
        return made[-1]

    yield make
    for gallery in made:
        gallery.close()


def populate(outputs: Path) -> None:
    write_png(outputs / "txt2img-images/2026-01-01/00000-1.png",
              infotext("A red Cat", "blurry", seed=1, sampler="Euler a", model="v1-5"), mtime_s=1)
    write_png(outputs / "txt2img-images/2026-01-02/00001-2.png",
              infotext("a dog", "ugly CAT", seed=2, sampler="DPM++ 2M", model="sdxl-base", size="64x32"), mtime_s=2)
    write_png(outputs / "img2img-images/2026-01-02/00000-3.png",
              infotext("landscape", seed=3, sampler="Euler a", model="V1-5", size="32x64"), mtime_s=3)
    write_png(outputs / "txt2img-grids/2026-01-02/grid-0000.png", None, mtime_s=4)


# --- order, paging, search -----------------------------------------------------------------------


def test_newest_first_with_name_as_tie_break_and_paging_math(outputs: Path, make_gallery) -> None:
    for i in range(7):
        write_png(outputs / f"txt2img-images/2026-01-01/{i:05d}-{i}.png", infotext(f"p{i}"), mtime_s=i)
    write_png(outputs / "txt2img-images/2026-01-01/00099-x.png", infotext("tie"), mtime_s=6)
    gallery = make_gallery(page_size=3)
    assert gallery.refresh() == 8
    first = gallery.page()
    assert (first.page, first.pages, first.total) == (1, 3, 8)
    assert [i.relative.rsplit("/", 1)[1] for i in first.items] == ["00099-x.png", "00006-6.png", "00005-5.png"]
    last = gallery.page(page=3)
    assert [i.prompt for i in last.items] == ["p1", "p0"]
    assert gallery.page(page=99).page == 3 and gallery.page(page=-5).page == 1
    item = first.items[1]
    assert item.path == outputs.resolve() / item.relative
    assert (item.folder, item.date, item.mtime) == ("txt2img-images", "2026-01-01", BASE_NS / 1e9 + 6)


def test_empty_or_missing_outputs_folder_gives_one_empty_page(tmp_path: Path) -> None:
    gallery = Gallery(tmp_path / "nothing-here", tmp_path / "cache")
    result = gallery.page()
    assert (result.items, result.page, result.pages, result.total) == ((), 1, 1, 0)
    assert gallery.folders() == [] and gallery.dates() == []
    gallery.close()


def test_page_refreshes_lazily_once(outputs: Path, make_gallery) -> None:
    populate(outputs)
    gallery = make_gallery()
    assert gallery.page().total == 4  # never refreshed: page() does it
    write_png(outputs / "txt2img-images/2026-01-03/00002-9.png", infotext("new"), mtime_s=9)
    assert gallery.page().total == 4  # page() never rescans after that
    assert gallery.refresh() == 5


@pytest.mark.parametrize(("query", "expected"), [
    (GalleryQuery(text="cat"), {"00000-1.png", "00001-2.png"}),  # prompt and negative, any case
    (GalleryQuery(text="RED CAT"), {"00000-1.png"}),
    (GalleryQuery(text="%"), set()),  # a LIKE wildcard stays literal
    (GalleryQuery(folder="txt2img-images"), {"00000-1.png", "00001-2.png"}),
    (GalleryQuery(date="2026-01-02"), {"00001-2.png", "00000-3.png", "grid-0000.png"}),
    (GalleryQuery(folder="txt2img-images", date="2026-01-02"), {"00001-2.png"}),
    (GalleryQuery(model="v1-5"), {"00000-1.png", "00000-3.png"}),
    (GalleryQuery(sampler="dpm++ 2m"), {"00001-2.png"}),
    (GalleryQuery(seed=3), {"00000-3.png"}),
    (GalleryQuery(size="64x32"), {"00001-2.png"}),
    (GalleryQuery(size=" 32 x 64 "), {"00000-3.png"}),
    (GalleryQuery(size="big"), set()),
    (GalleryQuery(text="cat", sampler="Euler a"), {"00000-1.png"}),
])
def test_search(outputs: Path, make_gallery, query: GalleryQuery, expected: set[str]) -> None:
    populate(outputs)
    result = make_gallery().page(query)
    assert {i.relative.rsplit("/", 1)[1] for i in result.items} == expected
    assert result.total == len(expected)


def test_folders_dates_and_parsed_fields(outputs: Path, make_gallery) -> None:
    populate(outputs)
    gallery = make_gallery()
    assert gallery.folders() == ["img2img-images", "txt2img-grids", "txt2img-images"]
    assert gallery.dates() == ["2026-01-02", "2026-01-01"]
    assert gallery.dates("img2img-images") == ["2026-01-02"]
    dog = gallery.page(GalleryQuery(seed=2)).items[0]
    assert (dog.prompt, dog.negative_prompt, dog.model, dog.sampler) == ("a dog", "ugly CAT", "sdxl-base", "DPM++ 2M")
    assert (dog.seed, dog.width, dog.height) == (2, 64, 32)
    grid = gallery.page(GalleryQuery(folder="txt2img-grids")).items[0]
    assert (grid.infotext, grid.prompt, grid.seed, grid.width) == ("", "", None, None)


# --- infotext from files -------------------------------------------------------------------------


def test_infotext_from_jpeg_and_webp_exif_user_comment(outputs: Path, make_gallery) -> None:
    text = infotext("ein Hund, 犬", "schlecht", seed=42, sampler="DDIM", model="m")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf-16-be")  # what A1111 writes
    folder = outputs / "txt2img-images/2026-02-02"
    folder.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(folder / "00000-42.jpg", format="JPEG", exif=exif)
    Image.new("RGB", (16, 16)).save(folder / "00001-42.webp", format="WEBP", exif=exif)
    items = make_gallery().page().items
    assert len(items) == 2
    for item in items:
        assert item.infotext == text
        assert (item.prompt, item.negative_prompt, item.seed, item.sampler) == ("ein Hund, 犬", "schlecht", 42, "DDIM")


def test_decode_user_comment_encodings() -> None:
    assert decode_user_comment(b"UNICODE\x00" + "hé".encode("utf-16-be")) == "hé"
    assert decode_user_comment(b"UNICODE\x00" + "hé".encode("utf-16")) == "hé"  # with a byte-order mark
    assert decode_user_comment(b"ASCII\x00\x00\x00cat\x00") == "cat"
    assert decode_user_comment(None) == "" and decode_user_comment(b"") == ""


def test_broken_image_is_listed_without_parameters(outputs: Path, make_gallery) -> None:
    broken = outputs / "txt2img-images/2026-01-01/00000-1.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a png at all")
    (outputs / "txt2img-images/2026-01-01/.00001-1.png.tmp").write_bytes(b"half written")
    (outputs / "txt2img-images/notes.txt").write_text("not an image")
    items = make_gallery().page().items
    assert [(i.relative, i.infotext) for i in items] == [("txt2img-images/2026-01-01/00000-1.png", "")]


# --- refresh -------------------------------------------------------------------------------------


def test_refresh_reads_only_new_and_changed_files(outputs: Path, make_gallery, monkeypatch) -> None:
    populate(outputs)
    reads: list[str] = []
    real = gallery_module.read_file_infotext
    monkeypatch.setattr(gallery_module, "read_file_infotext", lambda p: reads.append(p.name) or real(p))
    gallery = make_gallery()
    assert gallery.refresh() == 4 and len(reads) == 4
    reads.clear()
    assert gallery.refresh() == 4 and reads == []  # unchanged: nothing reread

    new = write_png(outputs / "txt2img-images/2026-01-03/00005-5.png", infotext("fresh"), mtime_s=10)
    changed = write_png(outputs / "txt2img-images/2026-01-01/00000-1.png", infotext("redone", seed=77), mtime_s=11)
    (outputs / "img2img-images/2026-01-02/00000-3.png").unlink()
    assert gallery.refresh() == 4
    assert sorted(reads) == sorted([new.name, changed.name])
    assert [i.prompt for i in gallery.page().items[:2]] == ["redone", "fresh"]
    assert gallery.page(GalleryQuery(seed=3)).total == 0

    reads.clear()  # a second Gallery on the same cache starts from the persisted index
    assert make_gallery().refresh() == 4 and reads == []


def test_corrupt_index_is_rebuilt(tmp_path: Path, outputs: Path) -> None:
    populate(outputs)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache/gallery.sqlite3").write_bytes(b"garbage" * 200)
    gallery = Gallery(outputs, tmp_path / "cache")
    assert gallery.refresh() == 4
    gallery.close()


# --- thumbnails and delete -----------------------------------------------------------------------


def test_thumbnail_cached_and_regenerated_after_change(outputs: Path, make_gallery, tmp_path: Path) -> None:
    path = write_png(outputs / "txt2img-images/2026-01-01/00000-1.png", infotext("x"), size=(600, 300), mtime_s=1)
    gallery = make_gallery()
    item = gallery.page().items[0]
    thumb = gallery.thumbnail(item)
    assert thumb.is_relative_to(tmp_path / "cache" / "thumbnails")
    with Image.open(thumb) as image:
        assert image.size == (256, 128)
    first_written = thumb.stat().st_mtime_ns
    assert gallery.thumbnail(item) == thumb and thumb.stat().st_mtime_ns == first_written  # cached

    write_png(path, infotext("y"), size=(100, 200), color="blue", mtime_s=2)
    new_thumb = gallery.thumbnail(item)  # even an item from before the change gets the new version
    assert new_thumb != thumb and not thumb.exists()
    with Image.open(new_thumb) as image:
        assert image.size == (100, 200)


def test_delete_removes_file_thumbnail_and_entry(outputs: Path, make_gallery) -> None:
    populate(outputs)
    gallery = make_gallery()
    item = gallery.page(GalleryQuery(seed=2)).items[0]
    thumb = gallery.thumbnail(item)
    gallery.delete(item.relative)
    assert not item.path.exists() and not thumb.exists()
    assert gallery.page().total == 3 and gallery.page(GalleryQuery(seed=2)).total == 0
    with pytest.raises(GalleryPathError):
        gallery.delete(item.relative)


def test_thumbnails_of_vanished_files_are_dropped_on_refresh(outputs: Path, make_gallery) -> None:
    populate(outputs)
    gallery = make_gallery()
    item = gallery.page(GalleryQuery(seed=1)).items[0]
    thumb = gallery.thumbnail(item)
    item.path.unlink()
    gallery.refresh()
    assert not thumb.exists()


# --- path safety ---------------------------------------------------------------------------------


@pytest.fixture
def escape_setup(tmp_path: Path, outputs: Path, make_gallery) -> Gallery:
    write_png(tmp_path / "x.png", None)  # a real image just outside the outputs folder
    write_png(tmp_path / "secret.png", None)
    inside = outputs / "txt2img-images/2026-01-01"
    write_png(inside / "ok.png", None)
    (inside / "link.png").symlink_to(tmp_path / "secret.png")
    (outputs / "linkdir").symlink_to(tmp_path)
    return make_gallery()


@pytest.mark.parametrize("relative", [
    "", "   ", "../x.png", "/etc/passwd", "txt2img-images/../../x.png", "%2e%2e/x.png", "a\\..\\b.png",
    "x\x00.png", "txt2img-images/2026-01-01/link.png", "linkdir/x.png", "TXT2IMG-IMAGES/../../x.png",
    "txt2img-images/2026-01-01/../../../x.png", "txt2img-images/2026-01-01/missing.png",
    "txt2img-images/2026-01-01", "txt2img-images/2026-01-01/ok.txt", "..", ".", "~/x.png",
    "//etc/x.png", "../outputs/txt2img-images/2026-01-01/ok.png",
])
def test_resolve_rejects_everything_outside(escape_setup: Gallery, relative: str) -> None:
    with pytest.raises(GalleryPathError):
        escape_setup.resolve(relative)


def test_resolve_accepts_images_inside(escape_setup: Gallery, outputs: Path) -> None:
    expected = outputs.resolve() / "txt2img-images/2026-01-01/ok.png"
    assert escape_setup.resolve("txt2img-images/2026-01-01/ok.png") == expected
    assert escape_setup.resolve("./txt2img-images//2026-01-01/ok.png") == expected


def test_symlinks_are_not_listed(escape_setup: Gallery) -> None:
    assert [i.relative for i in escape_setup.page().items] == ["txt2img-images/2026-01-01/ok.png"]


def test_thumbnails_are_not_images_of_the_gallery(tmp_path: Path, outputs: Path) -> None:
    write_png(outputs / "a/2026-01-01/x.png", None)
    gallery = Gallery(outputs, outputs / "cache")  # a cache inside the outputs must not list itself
    thumb = gallery.thumbnail(gallery.page().items[0])
    assert gallery.refresh() == 1
    with pytest.raises(GalleryPathError):
        gallery.resolve(thumb.relative_to(outputs.resolve()).as_posix())
    gallery.close()


# Folders that matter (the real ones, "..", the planted symlinks) then a file name, plus arbitrary
# text: the first reaches both accepted and rejected paths, the others odd characters.
FOLDERS = ["txt2img-images/2026-01-01", "txt2img-images", "2026-01-01", "linkdir", "outputs", "..", ".", "",
           "TXT2IMG-IMAGES", "%2e%2e", "a\\..", "x\x00", "~"]
NAMES = ["ok.png", "link.png", "x.png", "secret.png", "ok.PNG", "ok.txt", "..", ""]
path_text = (st.tuples(st.lists(st.sampled_from(FOLDERS), max_size=4), st.sampled_from(NAMES))
             .map(lambda parts: "/".join([*parts[0], parts[1]]))
             | st.text(alphabet=st.sampled_from("./\\\x00ax~%:"), max_size=20)
             | st.text(max_size=30))


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(relative=path_text)
@example(relative="txt2img-images/2026-01-01/ok.png")  # accepted
@example(relative="linkdir/outputs/txt2img-images/2026-01-01/ok.png")  # accepted: the real file is inside
def test_resolve_never_returns_a_path_outside(escape_setup: Gallery, outputs: Path, relative: str) -> None:
    root = outputs.resolve()
    try:
        resolved = escape_setup.resolve(relative)
    except GalleryPathError:
        return
    assert not relative.startswith("/") and ".." not in relative.split("/")
    assert "\\" not in relative and "\x00" not in relative
    assert is_inside(root, resolved) and resolved.is_file()
    assert os.path.commonpath([root, os.path.realpath(resolved)]) == str(root)


@PROPERTY
@given(relative=path_text)
def test_is_inside_agrees_with_an_independent_check(escape_setup: Gallery, outputs: Path, relative: str) -> None:
    # os.path.realpath + commonpath: a second, string-level implementation of containment.
    candidate = outputs / relative
    try:
        real_root, real = os.path.realpath(outputs), os.path.realpath(candidate)
    except ValueError:  # NUL byte: no such path can exist
        assert not is_inside(outputs, candidate)
        return
    assert is_inside(outputs, candidate) == (os.path.commonpath([real_root, real]) == real_root)


def test_thumbnails_of_a_page_in_parallel_match_one_by_one(outputs: Path, make_gallery) -> None:
    for i in range(5):
        write_png(outputs / f"txt2img-images/2026-01-01/{i:05d}-{i}.png", infotext(f"p{i}"), mtime_s=i)
    gallery = make_gallery()
    items = gallery.page().items
    assert gallery.thumbnails(items) == [gallery.thumbnail(item) for item in items]


@pytest.mark.parametrize(("folder", "text", "tab"), [
    ("txt2img-images", "", "txt2img"), ("txt2img-grids", "", "txt2img"), ("img2img-images", "", "img2img"),
    ("extras-images", "", "extras"),
    ("saved", "a\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64", "txt2img"),
    ("saved", "a\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64, Denoising strength: 0.5", "img2img"),
    ("saved", "a\nSteps: 20, Seed: 1, Size: 64x64, Denoising strength: 0.5, Hires upscale: 2", "txt2img"),
    ("saved", "Postprocess upscale by: 2, Postprocess upscaler: Lanczos, Size: 64x64", "extras"),
    ("saved", "", ""),
])
def test_caption_names_the_tab_that_made_the_image(outputs: Path, make_gallery, folder: str, text: str,
                                                  tab: str) -> None:
    write_png(outputs / folder / "2024-01-02" / "00001-7.png", text or None)
    (item,) = make_gallery().page().items
    assert item.caption == (f"{tab} \u00b7 00001-7.png" if tab else "00001-7.png")
