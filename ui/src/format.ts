/**
 * What the status bar item and the panel say: pure functions of the state the
 * kernel pushes (persistent_kernel/panel.py, read_state) and of the time now.
 */

/** The kernel's checkpoint state, as persistent_kernel.panel.read_state sends it. */
export interface IKernelState {
  phase:
    | 'restoring'
    | 'saving'
    | 'failing'
    | 'unsaved'
    | 'saved'
    | 'empty'
    | 'off';
  autosave: boolean;
  session: string | null;
  generation: number | null;
  /** Seconds since the epoch: when the generation shown was written. */
  created: number | null;
  size: number | null;
  unsaved: number;
  error: string | null;
  upload_error: string | null;
  saving: {
    since: number | null;
    variable: string;
    done?: number;
    total?: number;
  } | null;
  restoring: {
    generation: number | null;
    done: number;
    total: number;
    waited: [number, number] | null;
  } | null;
  pending: string[];
}

/** One generation, as persistent_kernel.restore.history lists it. */
export interface IGeneration {
  generation: number;
  created: number | null;
  size: number | null;
  added: string[];
  changed: string[];
  removed: string[];
  excluded: string[];
  error: string | null;
}

/** One variable, as persistent_kernel.cli.describe_generation lists it. */
export interface IVariable {
  name: string;
  type: string | null;
  size: number | null;
  status: 'saved' | 'skipped' | 'pending';
  reason: string | null;
  module: string | null;
  shared_with: string[];
  carried: boolean;
}

/** Bytes as the kernel writes them: 1536 -> "1.5 KiB" (render.human_size). */
export function humanSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let n = bytes;
  for (const unit of units) {
    if (Math.abs(n) < 1024 || unit === 'GiB') {
      return unit === 'B' ? `${Math.round(n)} B` : `${n.toFixed(1)} ${unit}`;
    }
    n /= 1024;
  }
  throw new Error('unreachable');
}

/** How long ago, in the words a status bar has room for: "12 s", "3 min", "2 h". */
export function ago(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min`;
  }
  if (s < 86400) {
    return `${Math.floor(s / 3600)} h`;
  }
  return `${Math.floor(s / 86400)} d`;
}

function cells(n: number): string {
  return n === 1 ? '1 cell' : `${n} cells`;
}

/** The status bar's line for *state* at wall-clock time *now* (seconds). */
export function statusText(state: IKernelState, now: number): string {
  const saved =
    state.created !== null ? `saved ${ago(now - state.created)} ago` : null;
  const size = state.size !== null ? ` · ${humanSize(state.size)}` : '';
  switch (state.phase) {
    case 'restoring': {
      const r = state.restoring;
      if (r === null) {
        return 'restoring...';
      }
      if (r.waited !== null) {
        return `waiting for the last kernel's checkpoint (${Math.round(r.waited[0])} s)`;
      }
      const percent = r.total ? Math.floor((100 * r.done) / r.total) : 0;
      return `restoring ${humanSize(r.done)} of ${humanSize(r.total)} (${percent}%)`;
    }
    case 'saving': {
      const took =
        state.saving?.since != null
          ? ` ${ago(now - state.saving.since)}`
          : '';
      const what = state.saving?.variable ? ` (${state.saving.variable})` : '';
      const total = state.saving?.total ?? 0;
      if (total > 0) {
        const done = Math.min(state.saving?.done ?? 0, total);
        const percent = Math.floor((100 * done) / total);
        return `saving ${humanSize(total)}... ${percent}%${took}${what}`;
      }
      return `saving...${took}${what}`;
    }
    case 'failing':
      return `not saved: ${state.error ?? 'the checkpoint failed'}`;
    case 'unsaved':
      return `${cells(state.unsaved)} not saved yet${saved ? ` · ${saved}` : ''}`;
    case 'saved':
      return `${saved ?? 'saved'}${size}`;
    case 'off':
      return 'automatic checkpoints off';
    case 'empty':
    default:
      return 'not saved yet';
  }
}

/** Whether the state is one the user must act on (shown as a warning). */
export function isWarning(state: IKernelState): boolean {
  return state.phase === 'failing' || state.upload_error !== null;
}

/** The tooltip: the whole sentence, with what a restart does. */
export function statusTitle(state: IKernelState): string {
  const lines = [`Kernel state: ${statusText(state, Date.now() / 1000)}`];
  if (state.upload_error) {
    lines.push(
      `Not in the bucket yet: ${state.upload_error}; kept on this machine and uploaded once the bucket answers.`
    );
  }
  lines.push(restartNote(state));
  return lines.join('\n');
}

/** What a restart does to this state, in one sentence. */
export function restartNote(state: IKernelState): string {
  if (!state.autosave) {
    return 'Automatic checkpoints are off: a restart brings back the last saved generation only.';
  }
  if (state.generation === null && state.phase !== 'unsaved') {
    return 'Nothing is saved yet: the first cell that changes a variable is checkpointed.';
  }
  return 'A restart keeps your variables: the kernel checkpoints them before it stops and restores them when it starts.';
}

/** What a generation added, changed, removed and excluded (render.changes). */
export function changesText(row: IGeneration): string {
  if (row.error) {
    return `unreadable: ${row.error}`;
  }
  const parts: string[] = [];
  for (const label of ['added', 'changed', 'removed', 'excluded'] as const) {
    const names = row[label];
    if (names.length) {
      const shown = names.slice(0, 8).join(', ');
      const more = names.length > 8 ? ` and ${names.length - 8} more` : '';
      parts.push(`${label} ${shown}${more}`);
    }
  }
  return parts.length ? parts.join('; ') : 'no variable changed';
}

/** How one variable stands: saved, skipped and why, or not saved yet. */
export function variableStatus(v: IVariable): string {
  let status: string;
  if (v.status === 'skipped') {
    status = `skipped: ${v.reason ?? ''}`;
  } else if (v.status === 'pending') {
    status = 'not saved yet';
  } else if (v.module) {
    status = `saved (import ${v.module})`;
  } else if (v.shared_with.length) {
    status = `saved (with ${v.shared_with.join(', ')})`;
  } else {
    status = 'saved';
  }
  if (v.carried) {
    status += ', carried over: not loaded at the last restore';
  }
  return status;
}

/** A wall-clock time as the kernel's reports show it: "2026-12-06 15:04:05". */
export function when(timestamp: number | null): string {
  if (timestamp === null) {
    return '-';
  }
  const d = new Date(timestamp * 1000);
  const pad = (n: number) => String(n).padStart(2, '0');
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}
