//! `top` on a terminal: a full-screen view redrawn each refresh (ratatui over crossterm,
//! which works over SSH and needs no mouse). `q`, Esc or Ctrl-C quits; the arrows and
//! Page Up/Down choose a queue, whose refusals by reason and depth are shown below the table.

use std::time::{Duration, Instant, SystemTime};

use portshare_proto::text::printable;
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table, TableState};

use super::model::{QueueRow, View, sparkline};
use super::plain::{clock, millis};

/// What the screen shows between refreshes.
#[derive(Debug, Default)]
struct Screen {
    view: Option<View>,
    /// The last error reaching the daemon, shown until a sample succeeds.
    error: Option<String>,
    taken: Option<SystemTime>,
    table: TableState,
}

/// Runs until the operator quits. `sample` is called once per `interval`.
pub(crate) fn run(
    interval: Duration,
    mut sample: impl FnMut() -> Result<Option<View>, String>,
) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let mut screen = Screen::default();
    screen.table.select(Some(0));
    let result = (|| {
        let mut next = Instant::now();
        loop {
            if Instant::now() >= next {
                match sample() {
                    Ok(Some(view)) => {
                        screen.view = Some(view);
                        screen.error = None;
                    }
                    Ok(None) => {}
                    Err(e) => screen.error = Some(e),
                }
                screen.taken = Some(SystemTime::now());
                next = Instant::now() + interval;
            }
            terminal.draw(|f| draw(f, &mut screen, interval))?;
            let wait = next.saturating_duration_since(Instant::now());
            if !event::poll(wait)? {
                continue;
            }
            let Event::Key(key) = event::read()? else {
                continue;
            };
            if key.kind != KeyEventKind::Press {
                continue;
            }
            let ctrl_c =
                key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
            match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                _ if ctrl_c => return Ok(()),
                KeyCode::Down | KeyCode::Char('j') => screen.table.select_next(),
                KeyCode::Up | KeyCode::Char('k') => screen.table.select_previous(),
                KeyCode::PageDown => screen.table.scroll_down_by(10),
                KeyCode::PageUp => screen.table.scroll_up_by(10),
                _ => {}
            }
        }
    })();
    ratatui::restore();
    result
}

fn draw(f: &mut Frame, screen: &mut Screen, interval: Duration) {
    let ports = screen.view.as_ref().map_or(0, |v| v.ports.len()) as u16;
    let [title, queues, detail, ports_area, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(5),
        // Borders, the header, and up to six addresses.
        Constraint::Length(ports.clamp(1, 6) + 3),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let when = screen.taken.map(clock).unwrap_or_default();
    let head = match &screen.view {
        Some(v) => format!(
            "portshare top · daemon {} (pid {}) · {when} UTC · every {:.1} s",
            v.version,
            v.pid,
            interval.as_secs_f64()
        ),
        None => format!("portshare top · {when} UTC · waiting for a second sample"),
    };
    f.render_widget(
        Paragraph::new(head).style(Style::new().add_modifier(Modifier::BOLD)),
        title,
    );
    if let Some(e) = &screen.error {
        f.render_widget(
            Paragraph::new(format!("cannot reach the daemon: {e}"))
                .block(Block::bordered().title(" Queues ")),
            queues,
        );
    } else if let Some(view) = &screen.view {
        queue_table(f, queues, view, &mut screen.table);
        let selected = screen.table.selected().and_then(|i| view.queues.get(i));
        queue_detail(f, detail, selected);
    }
    let rows: Vec<Row> = screen
        .view
        .iter()
        .flat_map(|v| &v.ports)
        .map(|p| Row::new([p.address.clone(), p.connections.to_string()]))
        .collect();
    f.render_widget(
        Table::new(rows, [Constraint::Length(48), Constraint::Length(12)])
            .header(Row::new(["Address", "Connections"]).style(header()))
            .block(Block::bordered().title(" Listeners ")),
        ports_area,
    );
    f.render_widget(
        Paragraph::new("q quit · ↑↓ choose a queue · PgUp/PgDn scroll"),
        help,
    );
}

fn header() -> Style {
    Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
}

fn queue_table(f: &mut Frame, area: Rect, view: &View, state: &mut TableState) {
    const SPARK: usize = 16;
    let rows: Vec<Row> = view
        .queues
        .iter()
        .map(|q| {
            let workers = q
                .workers
                .map_or(("hidden".to_owned(), "-".to_owned()), |w| {
                    (w.processes.to_string(), format!("{}/{}", w.free, w.slots))
                });
            let mut name = printable(&q.name).into_owned();
            if !q.enabled {
                name.push_str(" (disabled)");
            }
            Row::new([
                Cell::from(name),
                Cell::from(format!("{:.1}", q.arrivals)),
                Cell::from(format!("{:.1}", q.served)),
                Cell::from(format!("{:.1}", q.refused)),
                Cell::from(q.depth.to_string()),
                Cell::from(sparkline(&q.depth_history, SPARK)),
                Cell::from(format!("{}", q.oldest_wait.as_millis())),
                Cell::from(format!("{}/{}", millis(q.wait.p50), millis(q.wait.p99))),
                Cell::from(format!("{}/{}", millis(q.app.p50), millis(q.app.p99))),
                Cell::from(workers.0),
                Cell::from(workers.1),
            ])
        })
        .collect();
    let widths = [
        Constraint::Min(12),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(SPARK as u16),
        Constraint::Length(9),
        Constraint::Length(13),
        Constraint::Length(13),
        Constraint::Length(7),
        Constraint::Length(10),
    ];
    let title = format!(" Queues ({}) ", view.queues.len());
    let table = Table::new(rows, widths)
        .header(
            Row::new([
                "Queue",
                "Arr/s",
                "Srv/s",
                "Ref/s",
                "Depth",
                "Depth history",
                "Oldest ms",
                "Wait p50/p99",
                "App p50/p99",
                "Workers",
                "Free/slots",
            ])
            .style(header()),
        )
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .block(Block::bordered().title(title));
    if view.queues.is_empty() {
        f.render_widget(
            Paragraph::new("no queue").block(Block::bordered().title(" Queues (0) ")),
            area,
        );
    } else {
        f.render_stateful_widget(table, area, state);
    }
}

fn queue_detail(f: &mut Frame, area: Rect, q: Option<&QueueRow>) {
    let Some(q) = q else {
        f.render_widget(Block::bordered().title(" Queue "), area);
        return;
    };
    let block = Block::bordered().title(format!(
        " {} · owner {} ",
        printable(&q.name),
        printable(&q.owner)
    ));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [text, spark] = Layout::vertical([Constraint::Length(2), Constraint::Min(1)]).areas(inner);
    let refused = if q.refused_by.is_empty() {
        "refused/s: none".to_owned()
    } else {
        let by: Vec<String> = q
            .refused_by
            .iter()
            .map(|(reason, rate)| format!("{reason} {rate:.1}"))
            .collect();
        format!("refused/s: {}", by.join(", "))
    };
    let lines = vec![
        Line::from(refused),
        Line::from(format!(
            "in flight {} · depth {} · oldest waiting {} ms",
            q.in_flight,
            q.depth,
            q.oldest_wait.as_millis()
        )),
    ];
    f.render_widget(Paragraph::new(lines), text);
    f.render_widget(Sparkline::default().data(&q.depth_history), spark);
}
