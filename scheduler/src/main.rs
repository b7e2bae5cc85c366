//! `tarefa-scheduler`: see [`tarefa_scheduler::main_from_env`].

fn main() -> Result<(), tarefa_scheduler::Error> {
    tarefa_scheduler::main_from_env()
}
