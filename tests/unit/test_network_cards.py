"""Extra-network cards and LoRA aliases, from files in a temporary models folder: previews,
A1111's user metadata (name.json), sorting, search, what a click adds, and alias lookup."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from modules.services.addons import AddonKind, AddonRegistry
from modules.services.hashing import HashCache
from modules.services.network_cards import CardSort, NetworkCards
from modules.services.network_metadata import find_preview
from modules.ui.extra_networks_ui import toggle_lora, toggle_word
from modules.ui.network_cards import cards_html


def fake_lora(path: Path, output_name: str | None = None, mtime: int | None = None) -> Path:
    """A safetensors file with one tensor and kohya's metadata (enough for listing, not for loading)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"ss_network_module": "networks.lora"}
    if output_name:
        metadata["ss_output_name"] = output_name
    save_file({"lora_unet_x.lora_down.weight": np.ones((2, 2), np.float32)}, str(path), metadata=metadata)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def registry(folder: Path, tmp_path: Path, kind: AddonKind = AddonKind.LORA) -> AddonRegistry:
    return AddonRegistry(kind, (folder,), HashCache(tmp_path / "hashes.json"))


def red_png(path: Path, color: tuple[int, int, int] = (250, 0, 0)) -> None:
    Image.new("RGB", (64, 48), color).save(path)


def decoded(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


@pytest.fixture
def loras(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "Lora"
    fake_lora(folder / "style.safetensors", "trained-style", mtime=1_700_000_100)
    fake_lora(folder / "Basic.safetensors", mtime=1_700_000_300)
    fake_lora(folder / "sub" / "zeta.safetensors", mtime=1_700_000_200)
    red_png(folder / "style.preview.png")
    (folder / "style.json").write_text(json.dumps({
        "description": "A <b>bold</b> {{style}}", "activation text": "red cube", "preferred weight": 0.7,
        "notes": "", "sd version": "SD1"}), encoding="utf-8")
    return folder


def test_card_shows_preview_description_and_trigger_words(loras: Path, tmp_path: Path) -> None:
    reg = registry(loras, tmp_path)
    card = NetworkCards().find(reg, "style.safetensors")
    assert card is not None
    assert (card.name, card.tag_name, card.description, card.activation_text, card.weight) == (
        "style", "trained-style", "A <b>bold</b> {{style}}", "red cube", 0.7)
    image = decoded(card.preview)
    assert image.size == (64, 48) and image.convert("RGB").getpixel((10, 10))[0] > 200
    html = cards_html([card], "", "")
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>" not in html  # file text is never live HTML
    assert "{{" not in html and "Trigger words: red cube" in html
    plain = NetworkCards().find(reg, "Basic.safetensors")
    assert plain is not None and plain.preview == "" and "No preview" in cards_html([plain], "", "")


def test_preview_names_in_a1111_order_and_only_inside_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "Lora"
    model = fake_lora(folder / "a.safetensors")
    assert find_preview(model, (folder,)) is None
    red_png(folder / "a.preview.jpg")
    assert find_preview(model, (folder,)) == folder / "a.preview.jpg"
    red_png(folder / "a.png")  # name.ext comes before name.preview.ext, png before jpg
    assert find_preview(model, (folder,)) == folder / "a.png"
    outside = tmp_path / "elsewhere.png"
    red_png(outside)
    other = fake_lora(folder / "b.safetensors")
    (folder / "b.png").symlink_to(outside)
    assert find_preview(other, (folder,)) is None


def test_sort_by_name_date_and_direction(loras: Path, tmp_path: Path) -> None:
    reg, cards = registry(loras, tmp_path), NetworkCards()
    assert [c.name for c in cards.cards(reg, "", CardSort.NAME)] == ["Basic", "style", "zeta"]
    assert [c.name for c in cards.cards(reg, "", CardSort.NAME, descending=True)] == ["zeta", "style", "Basic"]
    assert [c.name for c in cards.cards(reg, "", CardSort.DATE_MODIFIED)] == ["style", "zeta", "Basic"]
    assert [c.name for c in cards.cards(reg, "", CardSort.DATE_MODIFIED, descending=True)] == ["Basic", "zeta", "style"]


def test_search_matches_name_path_description_and_says_when_nothing_matches(loras: Path, tmp_path: Path) -> None:
    reg, cards = registry(loras, tmp_path), NetworkCards()
    assert [c.name for c in cards.cards(reg, "SUB/")] == ["zeta"]
    assert [c.name for c in cards.cards(reg, "bold")] == ["style"]
    assert cards.cards(reg, "nope") == []
    assert 'Nothing found for "&lt;nope&gt;"' in cards_html([], "<nope>", "empty")
    assert cards.find(reg, "../style.safetensors") is None  # a click names a listed file, nothing else


def test_click_adds_the_tag_as_a1111_does_and_a_second_click_removes_it(loras: Path, tmp_path: Path) -> None:
    card = NetworkCards().find(registry(loras, tmp_path), "style.safetensors")
    assert card is not None
    # Prompt, tag and trigger words joined with ", " (the words stay separate tokens, as A1111's lists read).
    added = toggle_lora("a cube", card)
    assert added == "a cube, <lora:trained-style:0.7>, red cube"
    assert toggle_lora(added, card) == "a cube"
    assert toggle_lora("a cube,", card) == "a cube, <lora:trained-style:0.7>, red cube"
    assert toggle_lora("", card) == "<lora:trained-style:0.7>, red cube"
    plain = NetworkCards().find(registry(loras, tmp_path), "Basic.safetensors")
    assert plain is not None and toggle_lora("x", plain) == "x, <lora:Basic:1>"
    assert toggle_lora("x, <lora:Basic:1>, y", plain) == "x, y"
    assert toggle_word("a cube", "shiny") == "a cube, shiny"
    assert toggle_word("a cube, shiny", "shiny") == "a cube"


def test_lora_preferred_name_filename_makes_the_card_name_the_file(loras: Path, tmp_path: Path) -> None:
    # A1111's lora_preferred_name "Filename": the tag names the file, not the alias it was trained under.
    card = NetworkCards().find(registry(loras, tmp_path), "style.safetensors", by_file_name=True)
    assert card is not None and toggle_lora("a cube", card) == "a cube, <lora:style:0.7>, red cube"
    listed = NetworkCards().cards(registry(loras, tmp_path), "style", by_file_name=True)
    assert [c.tag_name for c in listed] == ["style"]


def test_lora_alias_resolves_and_ambiguity_goes_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "Lora"
    unique = fake_lora(folder / "unique-file.safetensors", "my-style")
    fake_lora(folder / "twin1.safetensors", "shared")
    fake_lora(folder / "twin2.safetensors", "shared")
    named = fake_lora(folder / "plainname.safetensors")
    fake_lora(folder / "claims.safetensors", "plainname")  # an alias that is another file's name
    fake_lora(folder / "nonealias.safetensors", "None")
    reg = registry(folder, tmp_path)
    assert reg.find("my-style").path == unique
    assert reg.find("unique-file").path == unique
    assert reg.find("shared") is None  # two files trained under one name: A1111 refuses the alias
    assert reg.find("plainname").path == named  # the file name wins over another file's alias
    assert reg.find("None") is None
    by_name = {item.name: item for item in reg.all()}
    assert reg.alias(by_name["twin1"]) == "shared"  # /loras still lists the alias the file carries
    assert reg.preferred_name(by_name["unique-file"]) == "my-style"
    assert reg.preferred_name(by_name["twin1"]) == "twin1"
    assert reg.preferred_name(by_name["claims"]) == "claims"
