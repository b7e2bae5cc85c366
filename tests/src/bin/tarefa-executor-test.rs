//! The executor binary, built inside the test package so the harness can spawn it (cargo
//! builds a package's binaries for its integration tests). Same entry point as the real one.

fn main() -> Result<(), tarefa_executor::Error> {
    tarefa_executor::main_from_env()
}
