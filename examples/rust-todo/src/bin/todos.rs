//! A command for one-off dynos: `skiff run -a APP -- todos` prints the todo list. Commands
//! reach the app's database through the same host interface as web dynos.

fn main() {
    let result = skiff_sdk::pg::Connection::open().and_then(|db| {
        db.query(
            "SELECT title, done FROM todos ORDER BY id",
            &[],
        )
    });
    match result {
        Ok(rows) => {
            for row in rows.rows() {
                let title: String = row.get("title").unwrap_or_default();
                let done: bool = row.get("done").unwrap_or_default();
                println!("[{}] {title}", if done { "x" } else { " " });
            }
            println!("{} todos", rows.len());
        }
        Err(e) => {
            eprintln!("todos: {e}");
            std::process::exit(1);
        }
    }
}
