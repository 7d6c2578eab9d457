/**
 * The status bar item and the "Kernel state" side panel: plain DOM in Lumino
 * widgets, drawn from the controller's client (see client.ts).
 */
import { Dialog, InputDialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { Controller } from './client';
import {
  IGeneration,
  IKernelState,
  IVariable,
  changesText,
  humanSize,
  isWarning,
  restartNote,
  statusText,
  statusTitle,
  variableStatus,
  when
} from './format';
import { IReply } from './requests';

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

function now(): number {
  return Date.now() / 1000;
}

/** The status bar item: one line, redrawn when the kernel pushes and each second
 * (for "saved 12 s ago"); a click opens the panel. */
export class StateItem extends Widget {
  constructor(
    private readonly controller: Controller,
    private readonly open: () => void
  ) {
    super();
    this.addClass('pk-StateItem');
    this.node.title = 'Kernel state';
    this.node.addEventListener('click', () => this.open());
    controller.changed.connect(this.redraw, this);
    this.timer = window.setInterval(() => this.redraw(), 1000);
    this.redraw();
  }

  /** Whether the notebook in front runs a persistent kernel. */
  get active(): boolean {
    return this.controller.client !== null || this.controller.restarting;
  }

  redraw(): void {
    const state = this.controller.client?.state ?? null;
    this.setHidden(!this.active);
    this.toggleClass('pk-mod-warning', state !== null && isWarning(state));
    if (state === null) {
      this.node.textContent = this.controller.restarting
        ? 'Kernel state: restarting, the state comes back'
        : 'Kernel state: ...';
      return;
    }
    this.node.textContent = `Kernel state: ${statusText(state, now())}`;
    this.node.title = statusTitle(state);
    this.node.dataset.phase = state.phase;
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }

  private readonly timer: number;
}

/** The side panel: the state, the generations, the variables, the actions. */
export class StatePanel extends Widget {
  constructor(private readonly controller: Controller) {
    super();
    this.id = 'persistent-kernel-state';
    this.title.caption = 'Kernel state';
    this.title.label = 'Kernel state';
    this.addClass('pk-StatePanel');
    this.headline = element('div', 'pk-headline');
    this.note = element('div', 'pk-note');
    const actions = element('div', 'pk-actions');
    actions.append(
      this.button('Save now', () => this.act('save')),
      this.button('Export...', () => this.exportFile()),
      this.button('Refresh', () => this.refresh())
    );
    this.message = element('pre', 'pk-message');
    this.generations = element('div', 'pk-generations');
    this.variables = element('div', 'pk-variables');
    this.node.append(
      this.headline,
      this.note,
      actions,
      this.message,
      element('h3', '', 'Generations'),
      this.generations,
      element('h3', '', 'Variables'),
      this.variables
    );
    controller.changed.connect(this.onChanged, this);
    this.timer = window.setInterval(() => this.drawHeadline(), 1000);
    this.onChanged();
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  private button(label: string, onClick: () => unknown): HTMLButtonElement {
    const button = element('button', 'jp-Button pk-button', label);
    button.addEventListener('click', () => void onClick());
    return button;
  }

  private onChanged(): void {
    this.drawHeadline();
    const state = this.controller.client?.state ?? null;
    // a new generation, or new unsaved names: the lists are read again (if shown)
    const key = state ? `${state.session}:${state.generation}:${state.unsaved}` : '';
    if (key !== this.shownKey && this.isVisible) {
      void this.refresh();
    }
    if (state === null && !this.controller.client) {
      this.generations.replaceChildren();
      this.variables.replaceChildren();
      this.shownKey = '';
    }
  }

  private drawHeadline(): void {
    const client = this.controller.client;
    const state = client?.state ?? null;
    this.node.classList.toggle('pk-mod-warning', state !== null && isWarning(state));
    if (client === null) {
      this.headline.textContent = this.controller.restarting
        ? 'The kernel is restarting: your variables come back once it has started.'
        : 'The notebook in front does not run the "Python (persistent)" kernel: there is no kernel state to show.';
      this.note.textContent = '';
      return;
    }
    if (state === null) {
      this.headline.textContent = 'Asking the kernel...';
      return;
    }
    this.headline.textContent = statusText(state, now());
    const notes = [restartNote(state)];
    if (state.upload_error) {
      notes.unshift(`Not in the bucket yet: ${state.upload_error}.`);
    }
    this.note.textContent = notes.join(' ');
  }

  /** Read the generations and the variables again. */
  async refresh(): Promise<void> {
    const client = this.controller.client;
    const state = client?.state ?? null;
    if (client === null || state === null || state.phase === 'restoring') {
      return;
    }
    this.shownKey = `${state.session}:${state.generation}:${state.unsaved}`;
    const [history, variables] = await Promise.all([
      client.request('history'),
      client.request('variables')
    ]);
    if (history.ok) {
      this.drawGenerations(history.data as IGeneration[]);
    } else {
      this.generations.textContent = history.text;
    }
    if (variables.ok) {
      const data = variables.data as { variables: IVariable[] };
      this.drawVariables(data.variables);
    } else {
      this.variables.textContent = variables.text;
    }
  }

  private drawGenerations(rows: IGeneration[]): void {
    if (!rows.length) {
      this.generations.textContent = 'No checkpoints yet.';
      return;
    }
    const list = element('ul', 'pk-list');
    for (const row of [...rows].reverse()) {
      const item = element('li', 'pk-row');
      item.dataset.generation = String(row.generation);
      const head = element('div', 'pk-row-head');
      head.append(
        element('span', 'pk-row-title', `${row.generation}`),
        element('span', 'pk-row-meta', `${when(row.created)}`),
        element('span', 'pk-row-meta', row.size !== null ? humanSize(row.size) : '-'),
        element('span', 'pk-row-fill')
      );
      if (!row.error) {
        head.append(
          this.button('Restore', () => this.restoreGeneration(row.generation)),
          this.button('Some...', () => this.restoreSome(row.generation))
        );
      }
      item.append(head, element('div', 'pk-row-detail', changesText(row)));
      list.append(item);
    }
    this.generations.replaceChildren(list);
  }

  private drawVariables(rows: IVariable[]): void {
    if (!rows.length) {
      this.variables.textContent = 'No variables.';
      return;
    }
    const list = element('ul', 'pk-list');
    for (const row of rows) {
      const item = element('li', 'pk-row');
      item.dataset.name = row.name;
      item.dataset.status = row.status;
      const head = element('div', 'pk-row-head');
      head.append(
        element('span', 'pk-row-title', row.name),
        element('span', 'pk-row-meta', row.type ?? '-'),
        element('span', 'pk-row-meta', row.size !== null ? humanSize(row.size) : ''),
        element('span', 'pk-row-fill')
      );
      if (row.status !== 'skipped') {
        head.append(this.button('Exclude', () => this.act('exclude', [row.name])));
      }
      item.append(head, element('div', `pk-row-detail pk-status-${row.status}`, variableStatus(row)));
      list.append(item);
    }
    this.variables.replaceChildren(list);
  }

  private async restoreGeneration(generation: number): Promise<void> {
    const answer = await showDialog({
      title: `Restore generation ${generation}?`,
      body: 'Its variables replace the ones of the same name in the kernel; other variables stay as they are.',
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Restore' })]
    });
    if (answer.button.accept) {
      await this.act('restore', [String(generation)]);
    }
  }

  private async restoreSome(generation: number): Promise<void> {
    const answer = await InputDialog.getText({
      title: `Restore variables of generation ${generation}`,
      label: 'Names, separated by spaces',
      okLabel: 'Restore'
    });
    const names = (answer.value ?? '').split(/\s+/).filter(Boolean);
    if (answer.button.accept && names.length) {
      await this.act('restore', [String(generation), ...names]);
    }
  }

  private async exportFile(): Promise<void> {
    const answer = await InputDialog.getText({
      title: 'Export the state to a file',
      label: 'Path (on the kernel\'s machine; plain dill.load_module reads it)',
      text: 'state.pkl',
      okLabel: 'Export'
    });
    if (answer.button.accept && answer.value) {
      await this.act('export', [answer.value]);
    }
  }

  /** Run `%persist <name> <args>` in the kernel; show its sentences. */
  private async act(name: string, args: string[] = []): Promise<void> {
    const client = this.controller.client;
    if (client === null) {
      return;
    }
    this.showReply({ reply: 0, ok: true, text: `%persist ${[name, ...args].join(' ')}...`, data: null });
    const reply = await client.request(name, { args });
    this.showReply(reply);
    await this.refresh();
  }

  private showReply(reply: IReply): void {
    this.message.textContent = reply.text;
    this.message.classList.toggle('pk-mod-error', !reply.ok);
  }

  private readonly headline: HTMLDivElement;
  private readonly note: HTMLDivElement;
  private readonly message: HTMLPreElement;
  private readonly generations: HTMLDivElement;
  private readonly variables: HTMLDivElement;
  private readonly timer: number;
  private shownKey = '';
}

/** The sentence Lab's and Notebook 7's restart dialog says, and ours instead. */
export const LOST = 'All variables will be lost.';
export const KEPT =
  'Your variables come back: the kernel checkpoints them before it stops and restores them when it starts.';

/**
 * While the notebook in front runs a persistent kernel, the restart dialog says
 * that the state comes back instead of "All variables will be lost.". The dialog
 * is JupyterLab's own (no hook changes its text), so its body is rewritten when
 * it is attached; any other dialog is left alone.
 */
export function watchRestartDialogs(controller: Controller): MutationObserver {
  const observer = new MutationObserver(records => {
    if (controller.client === null) {
      return;
    }
    for (const record of records) {
      record.addedNodes.forEach(node => {
        if (!(node instanceof HTMLElement)) {
          return;
        }
        const bodies = node.querySelectorAll('.jp-Dialog-body');
        bodies.forEach(body => rewrite(body));
      });
    }
  });
  observer.observe(document.body, { childList: true });
  return observer;
}

function rewrite(body: Element): void {
  const walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.textContent && node.textContent.includes(LOST)) {
      node.textContent = node.textContent.replace(LOST, KEPT);
    }
  }
}

export type { IKernelState };
