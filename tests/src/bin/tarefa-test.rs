//! The `tarefa` command, built inside the test package so the CLI scenarios can run it (cargo
//! builds a package's binaries for its integration tests). Same entry point as the real one.

fn main() {
    std::process::exit(tarefa::main_from_env())
}
