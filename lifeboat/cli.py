import typer

app = typer.Typer(help="Lifeboat: disaster-recovery runbooks")
