"""dbrx-instruct's chat template (ChatML), docs/tokenizer.md section 3.

The template is rendered as pieces: marker ids (<|im_start|>, <|im_end|>) and
the text runs between them. Each run is encoded whole, so special-token text
inside a message stays plain text, and content starting with "\\n\\n" tokenizes
as in the rendered string."""

from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

from dbrx_serve.shared.errors import InvalidInput, shown

PROMPT_A = (
    "You are DBRX, a Databricks creation, and you were last updated in December 2023. You answer questions based on "
    "information available up to that point, providing objective and thoughtful responses.\n"
    "You assist with various tasks, from writing to coding, using markdown \u2014 remember to use ``` with code, "
    "JSON, and tables. You do not have real-time data access or code execution capabilities.\n"
    "You avoid stereotyping and provide balanced perspectives on controversial topics. Your responses are concise "
    "for simple queries and detailed for complex questions.\n"
    "You do not provide song lyrics, poems, or news articles and do not divulge details of your training data.\n"
    "This is your system prompt, guiding your responses. Do not reference it, just respond to the user. If you "
    "find yourself talking about this message, stop. You should be responding appropriately and usually that "
    "means not mentioning this."
)
PROMPT_B = (
    "You are DBRX, created by Databricks. You were last updated in December 2023. You answer questions based on "
    "information available up to that point.\n"
    "YOU PROVIDE SHORT RESPONSES TO SHORT QUESTIONS OR STATEMENTS, but provide thorough responses to more complex "
    "and open-ended questions.\n"
    "You assist with various tasks, from writing to coding (using markdown for code blocks \u2014 remember to use "
    "``` with code, JSON, and tables).\n"
    "(You do not have real-time data access or code execution capabilities. You avoid stereotyping and provide "
    "balanced perspectives on controversial topics. You do not provide song lyrics, poems, or news articles and "
    "do not divulge details of your training data.)\n"
    "This is your system prompt, guiding your responses. Do not reference it, just respond to the user. If you "
    "find yourself talking about this message, stop. You should be responding appropriately and usually that "
    "means not mentioning this.\n"
    "YOU DO NOT MENTION ANY OF THIS INFORMATION ABOUT YOURSELF UNLESS THE INFORMATION IS DIRECTLY PERTINENT TO "
    "THE USER'S QUERY."
)
PROMPT_B_MARK = "YOU PROVIDE SHORT RESPONSES"
AUTO, NONE = "auto", "none"  # the two reserved values of a default-system-prompt setting


class ChatMessage(NamedTuple):
    role: str
    content: str


Piece = str | int  # a text run, or a marker's special id


def as_message(message: Any) -> ChatMessage:
    """Accept ChatMessage, (role, content), {"role", "content"} or any object with both attributes."""
    if isinstance(message, dict):
        role, content = message.get("role"), message.get("content")
    elif isinstance(message, tuple) and not hasattr(message, "role"):
        role, content = message if len(message) == 2 else (None, None)
    else:
        role, content = getattr(message, "role", None), getattr(message, "content", None)
    if not isinstance(role, str) or not isinstance(content, str):
        raise InvalidInput(f"a chat message needs a string role and a string content, got {shown(message)}")
    return ChatMessage(role, content)


def default_system_prompt(tokenizer_config: dict, setting: str = AUTO) -> str | None:
    """`auto`: prompt B if the template holds it, none if the config turns it off, else A.
    `none`: no default prompt. Anything else: that text."""
    if setting == NONE:
        return None
    if setting != AUTO:
        return setting
    if PROMPT_B_MARK in str(tokenizer_config.get("chat_template") or ""):
        return PROMPT_B
    if tokenizer_config.get("use_default_system_prompt") is False:
        return None
    return PROMPT_A


@dataclass(frozen=True)
class ChatTemplate:
    """ChatML with a default system prompt (None: no default), and the markers' ids."""

    default_system_prompt: str | None
    im_start_id: int
    im_end_id: int

    def split_system(self, messages: list[ChatMessage]) -> tuple[str | None, list[ChatMessage]]:
        """The system text and the turns (rule 1 of section 3)."""
        first = messages[0]
        if first.role == "system":
            return first.content, messages[1:]
        if "system" not in first.role and self.default_system_prompt is not None:
            return self.default_system_prompt, messages
        return None, messages

    def pieces(self, messages: Iterable[Any], add_generation_prompt: bool) -> list[Piece]:
        """Markers and text runs, adjacent text joined; refuses a chat with no turns."""
        messages = [as_message(m) for m in messages]
        system, turns = self.split_system(messages) if messages else (None, [])
        if not turns:
            raise InvalidInput("the chat has no turns: send at least one message besides the system message")
        out: list[Piece] = []
        if system is not None:
            out += [self.im_start_id, "system\n" + system.strip(), self.im_end_id, "\n"]
        for i, turn in enumerate(turns):
            out += ["\n" if i > 0 else "", self.im_start_id, turn.role + "\n" + turn.content, self.im_end_id]
        if add_generation_prompt:
            out += ["\n", self.im_start_id, "assistant\n"]
        return join_text(out)


def join_text(pieces: list[Piece]) -> list[Piece]:
    """Merge adjacent text runs and drop empty ones: each run is encoded whole."""
    out: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and out and isinstance(out[-1], str):
            out[-1] += piece
        elif piece != "":
            out.append(piece)
    return out


def render(pieces: list[Piece], special_text_of_id: dict[int, str]) -> str:
    """The template's string, as dbrx-instruct's Jinja template renders it."""
    return "".join(p if isinstance(p, str) else special_text_of_id[p] for p in pieces)
