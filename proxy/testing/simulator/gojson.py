"""JSON in as Ollama's Go server reads it: ``encoding/json``'s ``Decoder`` over a request body.

Gin's ``ShouldBindJSON`` decodes the body's first value and stops; a syntax error carries Go's
own wording (``invalid character 'x' looking for beginning of value``, ``unexpected EOF``), which
clients and the proxy's conformance tests see verbatim.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["GoSyntaxError", "decode_first"]

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class GoSyntaxError(Exception):
    """A body ``json.Decoder`` rejects; ``empty`` for a body with no value at all (``EOF``)."""

    def __init__(self, message: str, *, empty: bool = False) -> None:
        super().__init__(message)
        self.empty = empty


_WHITESPACE = " \t\r\n"
_DIGITS = "0123456789"
_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def _quote_char(char: str) -> str:
    """``encoding/json``'s ``quoteChar``: a character as its syntax errors show it."""
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    if char in _ESCAPES:
        return f"'{_ESCAPES[char]}'"
    if char.isprintable():
        return f"'{char}'"
    code = ord(char)
    return f"'\\x{code:02x}'" if code < 0x80 else f"'\\u{code:04x}'"


class _Scanner:
    """``encoding/json``'s scanner over one value, raising its errors (``unexpected EOF`` when
    the body ends inside the value, as ``json.Decoder`` reports it)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        if self.pos >= len(self.text):
            raise GoSyntaxError("unexpected EOF")
        return self.text[self.pos]

    def fail(self, context: str) -> GoSyntaxError:
        return GoSyntaxError(f"invalid character {_quote_char(self.text[self.pos])} {context}")

    def skip_space(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
            self.pos += 1
        return self.peek()

    def value(self) -> None:
        char = self.skip_space()
        if char == "{":
            self.object()
        elif char == "[":
            self.array()
        elif char == '"':
            self.string()
        elif char in "-" + _DIGITS:
            self.number()
        elif char in "tfn":
            self.literal({"t": "true", "f": "false", "n": "null"}[char])
        else:
            raise self.fail("looking for beginning of value")

    def object(self) -> None:
        self.pos += 1
        if self.skip_space() == "}":
            self.pos += 1
            return
        while True:
            if self.skip_space() != '"':
                raise self.fail("looking for beginning of object key string")
            self.string()
            if self.skip_space() != ":":
                raise self.fail("after object key")
            self.pos += 1
            self.value()
            char = self.skip_space()
            self.pos += 1
            if char == "}":
                return
            if char != ",":
                self.pos -= 1
                raise self.fail("after object key:value pair")

    def array(self) -> None:
        self.pos += 1
        if self.skip_space() == "]":
            self.pos += 1
            return
        while True:
            self.value()
            char = self.skip_space()
            self.pos += 1
            if char == "]":
                return
            if char != ",":
                self.pos -= 1
                raise self.fail("after array element")

    def string(self) -> None:
        self.pos += 1
        while True:
            char = self.peek()
            if char == '"':
                self.pos += 1
                return
            if char == "\\":
                self.pos += 1
                escape = self.peek()
                if escape == "u":
                    for _ in range(4):
                        self.pos += 1
                        if self.peek() not in "0123456789abcdefABCDEF":
                            raise self.fail("in \\u hexadecimal character escape")
                elif escape not in '"\\/bfnrt':
                    raise self.fail("in string escape code")
            elif ord(char) < 0x20:
                raise self.fail("in string literal")
            self.pos += 1

    def number(self) -> None:
        if self.text[self.pos] == "-":
            self.pos += 1
            if self.peek() not in _DIGITS:
                raise self.fail("in numeric literal")
        first = self.text[self.pos]
        self.pos += 1
        if first != "0":
            self._digits()
        if self._next_is("."):
            self.pos += 1
            if self.peek() not in _DIGITS:
                raise self.fail("after decimal point in numeric literal")
            self._digits()
        if self._next_is("e") or self._next_is("E"):
            self.pos += 1
            if self.peek() in "+-":
                self.pos += 1
            if self.peek() not in _DIGITS:
                raise self.fail("in exponent of numeric literal")
            self._digits()

    def _digits(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _DIGITS:
            self.pos += 1

    def _next_is(self, char: str) -> bool:
        return self.pos < len(self.text) and self.text[self.pos] == char

    def literal(self, word: str) -> None:
        for expected in word:
            if self.peek() != expected:
                raise self.fail(f"in literal {word} (expecting {_quote_char(expected)})")
            self.pos += 1


def decode_first(text: str) -> Any:
    """The body's first JSON value, as ``json.Decoder.Decode`` reads it; what follows it is the
    next ``Decode``'s business. A lone UTF-16 surrogate escape becomes U+FFFD, as in Go.

    Raises:
        GoSyntaxError: with Go's message; ``empty`` when there is no value at all.
    """
    scanner = _Scanner(text)
    try:
        scanner.skip_space()
    except GoSyntaxError:
        raise GoSyntaxError("EOF", empty=True) from None
    start = scanner.pos
    scanner.value()
    return json.loads(text[start : scanner.pos], object_pairs_hook=_replace_surrogates)


def _replace_surrogates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {_LONE_SURROGATE.sub("\ufffd", key): _valid_value(value) for key, value in pairs}


def _valid_value(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_valid_value(item) for item in value]
    return value  # objects were already rebuilt by the hook
