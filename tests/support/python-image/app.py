# The Flask app make-python-image --flask exercises while choosing modules,
# and again to check the finished image: the seed's hello world plus the
# request paths issue 6's tests use (bodies both ways, streaming, JSON,
# templates, 404, an exception logged as a 500). Run as `python3 app.py PORT`.
import sys

from flask import Flask, Response, jsonify, render_template_string, request

app = Flask(__name__)


@app.route("/")
def hello():
    return "Hello, World!"


@app.route("/echo", methods=["POST"])
def echo():
    return request.get_data()


@app.route("/stream/<int:n>")
def stream(n):
    return Response((b"x" * 65536 for _ in range(n)), mimetype="application/octet-stream")


@app.route("/json")
def as_json():
    return jsonify(ok=True, args=request.args.to_dict())


@app.route("/fail")
def fail():
    raise RuntimeError("expected failure")


@app.route("/hi/<name>")
def template(name):
    return render_template_string("hi {{ name }}", name=name)


if __name__ == "__main__":
    app.run(port=int(sys.argv[1]))
