import os
from flask import Flask, request, jsonify

app = Flask(__name__)

@app.get("/")
def index():
    return "Hello from Flask on Skiff!\n"

@app.get("/env/<name>")
def env(name):
    value = os.environ.get(name)
    if value is None:
        return f"{name} is not set\n", 404
    return value + "\n"

@app.post("/echo")
def echo():
    return request.get_data(), 200, {"content-type": request.content_type or "application/octet-stream"}

@app.get("/json")
def info():
    return jsonify(app="python-hello", framework="flask", path=request.path)
