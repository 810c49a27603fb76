"""The GMS localization file (`localizestring` notifications): parsing, locale choice, texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat.localization import Localizer, decode_escapes, flatten, render

# The document's example, verbatim (the second entry spans two lines).
DOC_FILE = """<?xml version="1.0" encoding="UTF-8"?>
<messages>
  <message id="welcome">
    <locale language="en_US"><entry key="text">Welcome</entry></locale>
    <locale language="de"><entry key="text">Willkommen</entry></locale>
    <locale language="es"><entry key="text">\\u00A1Hola</entry></locale>
  </message>
  <message id="welcomeArgs">
    <locale language="de"><entry key="text">Sehr geehrter Kunde $customer.lastname,
wie können Sie daran erinnert werden</entry></locale>
  </message>
  <message id="order">
    <locale language="en_US"><entry key="text">Order $order.id for $name is $order.state.
        Thanks, $name!</entry><entry key="title">Order update</entry></locale>
    <locale language="fr_CA"><entry key="text">Commande $order.id</entry></locale>
  </message>
</messages>
"""


@pytest.fixture
def localizer() -> Localizer:
    return Localizer.parse(DOC_FILE)


def test_the_documented_example_renders_as_the_document_shows(localizer: Localizer) -> None:
    text = localizer.localize("welcomeArgs", "de", {"customer.lastname": "Doe"})
    assert text == "Sehr geehrter Kunde Doe, wie können Sie daran erinnert werden"


def test_nested_and_flat_arguments_are_equivalent(localizer: Localizer) -> None:
    nested = localizer.localize("welcomeArgs", "de", {"customer": {"lastname": "Doe"}})
    flat = localizer.localize("welcomeArgs", "de", {"customer.lastname": "Doe"})
    assert nested == flat == "Sehr geehrter Kunde Doe, wie können Sie daran erinnert werden"


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("de", "Willkommen"),
        ("DE", "Willkommen"),  # case-insensitive
        ("de_DE", "Willkommen"),  # language part
        ("de-AT", "Willkommen"),  # `-` read as `_`
        ("en_US", "Welcome"),
        ("en-us", "Welcome"),
        ("es", "\u00a1Hola"),  # \\u escapes decoded
        ("et", "Welcome"),  # no Estonian: the default language
        ("fr", "Welcome"),
    ],
)
def test_locale_choice(localizer: Localizer, language: str, expected: str) -> None:
    assert localizer.localize("welcome", language) == expected


def test_without_any_matching_locale_the_message_id_is_sent(localizer: Localizer) -> None:
    assert localizer.localize("welcomeArgs", "fr", {"customer.lastname": "Doe"}) == "welcomeArgs"
    assert localizer.localize("no-such-message", "de") == "no-such-message"
    assert Localizer().localize("welcome", "de") == "welcome"


def test_the_default_language_is_configurable() -> None:
    german_default = Localizer.parse(DOC_FILE, default_language="de")
    assert german_default.localize("welcome", "fr") == "Willkommen"
    # a default with a region falls back to its language part too
    assert Localizer.parse(DOC_FILE, default_language="fr_CA").localize("order", "it") == (
        "Commande $order.id"
    )


def test_tokens_use_the_longest_argument_key_and_unknown_ones_stay(localizer: Localizer) -> None:
    args = {"order": {"id": 42, "state": "shipped"}, "name": "Ann", "order.id.extra": "x"}
    text = localizer.localize("order", "en_US", args)
    assert text == "Order 42 for Ann is shipped. Thanks, Ann!"
    assert localizer.localize("order", "en_US", {"name": "Ann"}) == (
        "Order $order.id for Ann is $order.state. Thanks, Ann!"
    )
    assert localizer.localize("order", "en_US", {"order": "O"}) == (
        "Order O.id for $name is O.state. Thanks, $name!"
    )


def test_other_entry_keys_are_kept(localizer: Localizer) -> None:
    assert localizer.localize("order", "en", key="title") == "Order update"


def test_helpers() -> None:
    assert flatten({"a": {"b": {"c": 1}}, "d": True, "e": None}) == {
        "a.b.c": "1",
        "d": "true",
        "e": "",
    }
    assert decode_escapes("\\u00e9t\\u00E9 \\ud83d\\ude00") == "été 😀"
    assert render("  one\n   two\r\n\tthree  ", {}) == "one two three"
    assert render("$a$b $a.b.", {"a": "1", "b": "2"}) == "12 1.b."


def test_the_file_comes_from_the_push_section(tmp_path: Path) -> None:
    path = tmp_path / "messages.xml"
    path.write_text(DOC_FILE, encoding="utf-8")
    sections = {"push": {"localization_file": str(path), "default_language": "de"}}
    localizer = Localizer.from_sections(sections)
    assert localizer.localize("welcome", "zz") == "Willkommen"
    assert Localizer.from_sections({}).messages == {}


def test_a_missing_or_broken_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="localization_file"):
        Localizer.from_sections({"push": {"localization_file": str(tmp_path / "none.xml")}})
    broken = tmp_path / "broken.xml"
    broken.write_text("<messages><message id='x'>", encoding="utf-8")
    with pytest.raises(ValueError, match="localization_file"):
        Localizer.load(broken)
