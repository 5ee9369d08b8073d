"""The judge: math answers checked by math-verify, programs run against tests inside nsjail.

Run it as a service with `python -m judge serve`, judge JSON Lines with `python -m judge check`,
and talk to the service from Python with `proto.judge_client.JudgeClient`. See docs/judge.md.
"""
