use std::process::ExitCode;

fn main() -> ExitCode {
    imcast::run(std::env::args_os())
}
