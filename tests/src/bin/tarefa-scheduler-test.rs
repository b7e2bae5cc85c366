//! The scheduler binary, built inside the test package so the harness can spawn it (cargo
//! builds a package's binaries for its integration tests). Same entry point as the real one.

fn main() -> Result<(), tarefa_scheduler::Error> {
    tarefa_scheduler::main_from_env()
}
