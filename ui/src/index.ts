/**
 * persistent-kernel's JupyterLab 4 / Notebook 7 extension: a status bar item
 * (in Notebook 7, which has no status bar, in the header) and a "Kernel state"
 * side panel for notebooks on the "Python (persistent)" kernel. It talks to the
 * kernel over one comm (persistent_kernel/panel.py); a notebook on any other
 * kernel shows nothing.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';

import { Controller } from './client';
import { StateItem, StatePanel, watchRestartDialogs } from './widgets';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'persistent-kernel:state',
  description: 'What persistent-kernel has saved, and every generation back with a click.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    statusBar: IStatusBar | null
  ) => {
    const controller = new Controller();
    const panel = new StatePanel(controller);
    app.shell.add(panel, 'right', { rank: 900 });
    const item = new StateItem(controller, () => app.shell.activateById(panel.id));
    if (statusBar) {
      statusBar.registerStatusItem('persistent-kernel:state', {
        item,
        align: 'left',
        rank: 5,
        isActive: () => item.active,
        activeStateChanged: controller.changed
      });
    } else {
      app.shell.add(item, 'top', { rank: 1000 });
    }
    const follow = () => controller.follow(tracker.currentWidget?.sessionContext ?? null);
    tracker.currentChanged.connect(follow);
    follow();
    watchRestartDialogs(controller);
  }
};

export default plugin;
