"""A small todo list on Skiff in plain WSGI: rows in the app's PostgreSQL database (`skiff
addons:create postgres`), a visit counter in its key-value store (`skiff addons:create kv`).

GET /todos lists, POST /todos (body: the title) adds, POST /todos/<id>/done marks done,
GET /visits counts.
"""

import json

import skiff


def db():
    conn = skiff.pg.connect()
    conn.execute(
        "CREATE TABLE IF NOT EXISTS todos ("
        " id serial PRIMARY KEY, title text NOT NULL, done boolean NOT NULL DEFAULT false)"
    )
    return conn


def respond(start_response, status, body, content_type="text/plain; charset=utf-8"):
    data = body.encode()
    start_response(status, [("content-type", content_type), ("content-length", str(len(data)))])
    return [data]


def app(environ, start_response):
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "/")
    try:
        if method == "GET" and path == "/todos":
            rows = db().query("SELECT id, title, done FROM todos ORDER BY id")
            return respond(start_response, "200 OK", json.dumps(rows), "application/json")
        if method == "POST" and path == "/todos":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            title = environ["wsgi.input"].read(length).decode().strip()
            if not title:
                return respond(start_response, "400 Bad Request", "a todo needs a title\n")
            row = db().query("INSERT INTO todos (title) VALUES ($1) RETURNING id", [title])
            return respond(start_response, "201 Created", f"{row[0]['id']}\n")
        if method == "POST" and path.startswith("/todos/") and path.endswith("/done"):
            todo = path[len("/todos/"):-len("/done")]
            if not todo.isdigit():
                return respond(start_response, "400 Bad Request", "bad todo id\n")
            n = db().execute("UPDATE todos SET done = true WHERE id = $1", [int(todo)])
            if n == 0:
                return respond(start_response, "404 Not Found", "no such todo\n")
            return respond(start_response, "200 OK", "done\n")
        if method == "GET" and path == "/visits":
            store = skiff.kv.open()
            visits = int(store.get("visits") or b"0") + 1
            store.set("visits", str(visits))
            return respond(start_response, "200 OK", f"{visits}\n")
        return respond(start_response, "404 Not Found", "not found\n")
    except skiff.Error as e:
        status = "503 Service Unavailable" if "NotConfigured" in str(e) else "500 Internal Server Error"
        return respond(start_response, status, f"{e}\n")
