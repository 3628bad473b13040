"""Message templates: a locked-down Jinja2 sandbox, allow-listed filters, channel limits.

``check_template`` at publish time, ``render_message`` / ``render_subject`` at send time. Every
refusal is a ``careflow.exceptions.TemplateError(code, message)`` with a stable code from
``careflow.templates.codes``. Pure Python, no Airflow import.
"""

from careflow.templates.limits import CHANNEL_LIMITS, message_size
from careflow.templates.render import (
    CompiledTemplate,
    TemplateProblem,
    cache_info,
    check_template,
    compile_template,
    render_message,
    render_subject,
)

__all__ = [
    "CHANNEL_LIMITS",
    "CompiledTemplate",
    "TemplateProblem",
    "cache_info",
    "check_template",
    "compile_template",
    "message_size",
    "render_message",
    "render_subject",
]
