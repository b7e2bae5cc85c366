//! `tarefa-executor`: see [`tarefa_executor::main_from_env`].

fn main() -> Result<(), tarefa_executor::Error> {
    tarefa_executor::main_from_env()
}
