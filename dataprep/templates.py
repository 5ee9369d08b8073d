"""The recipe's prompt templates, and their removal for text comparison.

User text is only ever concatenated: problems hold `{}`, `{0}` and `\\boxed{}`, which a
`str.format` template would eat or choke on.
"""

from __future__ import annotations

MATH_INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."

STARTER_INSTRUCTION = (
    "You will use the following starter code to write the solution to the problem "
    "and enclose your code within delimiters."
)
STDIN_INSTRUCTION = (
    "Read the inputs from stdin solve the problem and write the answer to stdout "
    "(do not directly test on the sample inputs). Enclose your code within delimiters as follows."
)
# The code instructions start a paragraph of their own after the problem.
CODE_MARKERS = ("\n\n" + STARTER_INSTRUCTION, "\n\n" + STDIN_INSTRUCTION)


def math_prompt(problem: str) -> str:
    """The problem, then the boxed-answer instruction."""
    return problem.rstrip() + MATH_INSTRUCTION


def code_prompt(problem: str, starter_code: str | None = None) -> str:
    """The problem, then the starter code to complete, or the stdin/stdout instruction."""
    body = problem.rstrip() + "\n\n"
    if starter_code and starter_code.strip():
        return body + STARTER_INSTRUCTION + "\n```python\n" + starter_code.rstrip("\n") + "\n```\n"
    return body + STDIN_INSTRUCTION + "\n```python\n```\n"


def strip_template(prompt: str) -> str:
    """The problem text of a prompt (and its starter code), without the template's instructions.

    Two problems that differ only in their template must compare equal, and the template's own
    words must never count as overlap between two problems. Starter code stays: for HumanEval it
    is the whole problem.
    """
    if prompt.endswith(MATH_INSTRUCTION):
        return prompt[: -len(MATH_INSTRUCTION)]
    starter_at = prompt.rfind(CODE_MARKERS[0])
    stdin_at = prompt.rfind(CODE_MARKERS[1])
    if stdin_at > starter_at:
        return prompt[:stdin_at]
    if starter_at < 0:
        return prompt
    rest = prompt[starter_at + len(CODE_MARKERS[0]) :]
    starter = rest.removeprefix("\n```python\n").rstrip("\n").removesuffix("```").rstrip("\n")
    return prompt[:starter_at] + "\n\n" + starter
