//! A small todo list on Skiff: rows in the app's PostgreSQL database (`skiff addons:create
//! postgres`), a visit counter in its key-value store (`skiff addons:create kv`).
//!
//! GET /todos lists, POST /todos (body: the title) adds, POST /todos/<id>/done marks done,
//! GET /visits counts. The database and store are reached through Skiff's host interfaces.

use serde::Serialize;
use skiff_sdk::{kv, pg};
use wstd::http::body::Body;
use wstd::http::{Error, Method, Request, Response, StatusCode};

#[derive(Serialize)]
struct Todo {
    id: i32,
    title: String,
    done: bool,
}

fn db() -> Result<pg::Connection, skiff_sdk::Error> {
    let db = pg::Connection::open()?;
    db.execute(
        "CREATE TABLE IF NOT EXISTS todos (
            id    serial PRIMARY KEY,
            title text NOT NULL,
            done  boolean NOT NULL DEFAULT false
        )",
        &[],
    )?;
    Ok(db)
}

fn list() -> Result<Vec<Todo>, skiff_sdk::Error> {
    let rows = db()?.query("SELECT id, title, done FROM todos ORDER BY id", &[])?;
    rows.rows()
        .map(|row| {
            Ok(Todo {
                id: row.get("id")?,
                title: row.get("title")?,
                done: row.get("done")?,
            })
        })
        .collect()
}

fn add(title: &str) -> Result<i32, skiff_sdk::Error> {
    let rows = db()?.query(
        "INSERT INTO todos (title) VALUES ($1) RETURNING id",
        &[title.into()],
    )?;
    match rows.rows().next() {
        Some(row) => row.get("id"),
        None => Err(skiff_sdk::Error::Query("no id returned".into())),
    }
}

fn mark_done(id: i32) -> Result<u64, skiff_sdk::Error> {
    db()?.execute("UPDATE todos SET done = true WHERE id = $1", &[id.into()])
}

fn count_visit() -> Result<u64, skiff_sdk::Error> {
    let store = kv::Store::open()?;
    let visits = store
        .get_string("visits")?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    store.set("visits", visits.to_string())?;
    Ok(visits)
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request.uri().path().to_owned();
    eprintln!("{} {path}", request.method());
    let result = match (request.method().clone(), path.as_str()) {
        (Method::GET, "/") => Ok(text(StatusCode::OK, "Todos on Skiff: GET/POST /todos\n")),
        (Method::GET, "/todos") => list().map(|todos| json(&todos)),
        (Method::POST, "/todos") => {
            let body = request.into_body().bytes_contents().await?;
            let title = String::from_utf8_lossy(&body).trim().to_owned();
            if title.is_empty() {
                Ok(text(StatusCode::BAD_REQUEST, "a todo needs a title\n"))
            } else {
                add(&title).map(|id| text(StatusCode::CREATED, &format!("{id}\n")))
            }
        }
        (Method::POST, p) if p.starts_with("/todos/") && p.ends_with("/done") => {
            let id = p["/todos/".len()..p.len() - "/done".len()].parse::<i32>();
            match id {
                Ok(id) => mark_done(id).map(|n| match n {
                    0 => text(StatusCode::NOT_FOUND, "no such todo\n"),
                    _ => text(StatusCode::OK, "done\n"),
                }),
                Err(_) => Ok(text(StatusCode::BAD_REQUEST, "bad todo id\n")),
            }
        }
        (Method::GET, "/visits") => count_visit().map(|n| text(StatusCode::OK, &format!("{n}\n"))),
        _ => Ok(text(StatusCode::NOT_FOUND, "not found\n")),
    };
    Ok(result.unwrap_or_else(|e| {
        eprintln!("add-on error: {e}");
        let status = match e {
            skiff_sdk::Error::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        text(status, &format!("{e}\n"))
    }))
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        wstd::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_string(value) {
        Ok(s) => {
            let mut resp = Response::new(Body::from(s));
            resp.headers_mut().insert(
                "content-type",
                wstd::http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}
