// A SIGHUP that came while a program was still starting ended it (Node's default for SIGHUP is to exit
// until a listener is installed, and the programs install theirs once started): `systemctl reload` right
// after a start, from a certbot deploy hook, killed the service. Each entry installs this listener before it
// loads the rest, and the program does the reload it held once it has started. Imports nothing, as the
// entry loads it first.
let held = false;
const hold = (): void => {
  held = true;
};

/** From now until takeHeldReload(): a SIGHUP is remembered, not fatal. */
export function holdReloadWhileStarting(): void {
  process.on('SIGHUP', hold);
}

/** The program listens for SIGHUP itself now: true when one came while it was starting. */
export function takeHeldReload(): boolean {
  process.off('SIGHUP', hold);
  const came = held;
  held = false;
  return came;
}
