"""The baseline for benchmarks/receiver.py: a bare Flask endpoint answering 204."""

from flask import Flask, Response, request

app = Flask(__name__)


@app.post("/webhooks/modelgates/<token>")
def receive(token: str) -> Response:
    request.get_data()
    return Response(status=204)
