// Where each [[proxies]] and [[visitors]] table of a client's configuration was written: client.toml or one
// of the files its `includes` name, and its index in that file. The tables are checked as one list (names,
// ports, ranges), and each message names a table where the user wrote it.
import { elementLabel } from '@porthole/protocol';

export type TableKind = 'proxies' | 'visitors';

/** A table's file and its index there. */
export interface TablePlace {
  file: string;
  index: number;
}

export class TablePlaces {
  /**
   * `main` is client.toml (or "command line"); `included` the places of the tables that come after its own,
   * in order. A table past them (a --tcp rule's) is named as client.toml's, at its index in the whole list.
   */
  constructor(
    readonly main: string,
    private readonly mainCounts: Readonly<Record<TableKind, number>>,
    private readonly included: Readonly<Record<TableKind, readonly TablePlace[]>>,
  ) {}

  /** Where the `index`-th table of the whole list was written. */
  of(kind: TableKind, index: number): TablePlace {
    const count = this.mainCounts[kind];
    if (index < count) return { file: this.main, index };
    return this.included[kind][index - count] ?? { file: this.main, index };
  }

  /** "proxies[0] ("web")": the table as its own file names it (`element` for its name, if it has one). */
  local(kind: TableKind, index: number, element?: unknown): string {
    return `${kind}${elementLabel(this.of(kind, index).index, element)}`;
  }

  /**
   * The table in a line that names no file (a warning, `check`'s): "proxies[0] ("web")" for client.toml's,
   * "/etc/porthole/conf.d/web.toml: proxies[0] ("web")" for an included file's.
   */
  label(kind: TableKind, index: number, element?: unknown): string {
    const { file } = this.of(kind, index);
    const local = this.local(kind, index, element);
    return file === this.main ? local : `${file}: ${local}`;
  }

  /** The table with its file: "proxies[0] ("web") in /etc/porthole/client.toml". */
  withFile(kind: TableKind, index: number, element?: unknown): string {
    return `${this.local(kind, index, element)} in ${this.of(kind, index).file}`;
  }

  /** The table `index`, as a message about the table `from` names it: its file too when that is another. */
  seenFrom(from: number, kind: TableKind, index: number, element?: unknown): string {
    return this.of(kind, from).file === this.of(kind, index).file
      ? this.local(kind, index, element)
      : this.withFile(kind, index, element);
  }
}
