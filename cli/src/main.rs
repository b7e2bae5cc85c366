//! `tarefa`: see [`tarefa::main_from_env`].

fn main() {
    std::process::exit(tarefa::main_from_env())
}
