"""The research console (Streamlit script run by ``atelier console``): three pages over one connection.

Sidebar: the API URL and key (from ``ATELIER_URL``/``ATELIER_API_KEY`` or typed; the key is
never shown back). Pages, in the top bar:

- *Research assistant* (the default): the knowledge base to work on and a form to create
  one (sidebar); the retrieval options, then three tabs: *Ask* (a grounded answer with its
  ``[n]`` citations as numbered sources), *Search* (the passages of a plain search) and
  *Documents* (upload, and each document's ingestion state, polled until ready or failed).
- *Playground* (``/playground``, ``playground_page``): one message to a chat model with every
  sampling control, the answer streamed, log probabilities, the request as code.
- *Fine-tuning* (``/fine-tuning``, ``finetuning_page``): jobs and their loss and accuracy curves,
  evaluations and their reports next to their k-shot baselines.

Every request goes through ``atelier.console.actions`` to the HTTP API; an API error is
shown as such (status and message), never as a traceback. Script arguments (after ``--``):
``--url URL`` sets the default API URL.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import streamlit as st

from atelier.client import ApiError, ServerUnreachable
from atelier.console import actions, finetuning_page, playground_page
from atelier.console.actions import Connection
from atelier.console.calls import call
from atelier.settings import Settings

# (No attribute docstrings in this script: Streamlit would show bare strings on the page.)
POLL_SECONDS = 1.5  # how often the document list is refreshed while an ingestion is under way
MAX_ANSWER_TOKENS = 200  # default length limit of an answer (a small CPU model writes ~15 tokens/s)
STATE_ICONS = {"ready": ":green[:material/check_circle:]", "failed": ":red[:material/error:]"}  # Streamlit's own font


def script_url() -> str | None:
    """The ``--url`` given to the script (``streamlit run app.py -- --url URL``), if any."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--url")
    known, _ = parser.parse_known_args(sys.argv[1:])
    return known.url


def flash(message: str, error: bool = False) -> None:
    """Show ``message`` once, after the next rerun (as an error if ``error``)."""
    st.session_state.setdefault("flash", []).append((message, error))


# --- sidebar -----------------------------------------------------------------------------------


def connection_sidebar(settings: Settings) -> Connection:
    """The URL and key fields; typed values win over the environment's."""
    st.sidebar.header("Connection")
    default_url = script_url() or settings.url
    url = st.sidebar.text_input("API URL", value=default_url, key="api_url")
    env_key = actions.resolve_connection(settings).key_source
    hint = {"environment": "set by ATELIER_API_KEY", "admin.key": "the local admin.key"}.get(env_key, "paste a key")
    typed_key = st.sidebar.text_input("API key", value="", type="password", key="api_key", placeholder=hint)
    conn = actions.resolve_connection(settings.model_copy(update={"url": default_url}), url, typed_key or "")
    used = {"sidebar": "typed above", "environment": "from the environment", "admin.key": "from the local admin.key"}
    st.sidebar.caption(f"Key: {used.get(conn.key_source, 'none (requests are anonymous)')}")
    return conn


def knowledge_base_sidebar(conn: Connection) -> dict[str, Any] | None:
    """Choose a knowledge base (or create one); the chosen one, or ``None``."""
    st.sidebar.header("Knowledge base")
    if "select_kb" in st.session_state:  # set by the create form before the rerun
        st.session_state["kb_id"] = st.session_state.pop("select_kb")
    with conn.client() as client:
        kbs = call(actions.knowledge_bases, client)
    if kbs is None:
        return None
    by_id = {kb["id"]: kb for kb in kbs}
    chosen = None
    if kbs:
        if st.session_state.get("kb_id") not in by_id:
            st.session_state.pop("kb_id", None)
        names = {kb_id: kb["name"] for kb_id, kb in by_id.items()}
        chosen = st.sidebar.selectbox("Knowledge base", list(by_id), key="kb_id", format_func=names.__getitem__)
    else:
        st.sidebar.caption("No knowledge base yet: create one below.")
    with st.sidebar.expander("New knowledge base", expanded=not kbs):
        create_form(conn)
    return by_id.get(chosen) if chosen else None


def create_form(conn: Connection) -> None:
    """Name, embedding model and chunking of a new knowledge base."""
    with conn.client() as client:
        embedders = call(actions.models_with, client, "embedding") or []
    with st.form("create_kb", clear_on_submit=False):
        name = st.text_input("Name", placeholder="letters, digits, '_', '.', '-'")
        default = embedders.index("multilingual-e5-small") if "multilingual-e5-small" in embedders else 0
        model = st.selectbox("Embedding model", embedders, index=default) if embedders else None
        size = st.number_input("Chunk size (tokens)", min_value=16, max_value=8192, value=256, step=16)
        overlap = st.number_input("Chunk overlap (tokens)", min_value=0, max_value=4096, value=32, step=8)
        if st.form_submit_button("Create", type="primary"):
            with conn.client() as client:
                kb = call(actions.create_knowledge_base, client, name, model, int(size), int(overlap))
            if kb is not None:
                st.session_state["select_kb"] = kb["id"]
                flash(f"Created knowledge base {kb['name']}.")
                st.rerun()


# --- main area ---------------------------------------------------------------------------------


def show_source(source: actions.Source, key: str) -> None:
    """A numbered source: its label (file, span, heading) and its passage, shown literally."""
    with st.container(border=True, key=key):
        score = f" · score {source.score:.3f}" if source.score is not None else ""
        st.markdown(f"**{actions.escape_markdown(source.label)}**{actions.escape_markdown(score)}")
        st.markdown(actions.escape_markdown(source.text))


def ask_tab(conn: Connection, kb: dict[str, Any], mode: str, top_k: int) -> None:
    """A question, the grounded answer, its cited sources and the passages given to the model."""
    with conn.client() as client:
        chat_models = call(actions.models_with, client, "chat") or []
    with st.form("ask"):
        question = st.text_area("Question", placeholder="What do the documents say about…?")
        model = st.selectbox("Chat model", ["(server default)", *chat_models])
        answer_mode = st.radio("Answer", list(actions.ANSWER_MODES), horizontal=True,
                               format_func=lambda m: m.capitalize(), help="\n".join(
                                   f"- **{m}**: {text}" for m, text in actions.ANSWER_MODES.items()))
        max_tokens = st.number_input("Most answer tokens", min_value=16, max_value=4096, value=MAX_ANSWER_TOKENS,
                                     step=16)
        asked = st.form_submit_button("Ask", type="primary")
    if asked and question.strip():
        with st.spinner("Retrieving passages and writing the answer…"), conn.client() as client:
            chosen = None if model == "(server default)" else model
            result = call(actions.ask, client, kb["id"], question.strip(), mode, top_k, chosen, int(max_tokens),
                          answer_mode)
        st.session_state["last_answer"] = (kb["id"], result) if result is not None else None
    elif asked:
        st.warning("Type a question first.")
    stored = st.session_state.get("last_answer")
    if not stored or stored[0] != kb["id"]:
        return
    result = stored[1]
    with st.container(key="answer"):
        st.subheader("Answer")
        st.markdown(result.markdown)
        if result.answer_mode == "extractive":
            st.caption("quoted from the sources (extractive, no model)")
        elif result.model:
            st.caption(f"model: {result.model} · {result.answer_mode}")
    with st.container(key="sources"):
        st.subheader("Sources")
        if not result.citations:
            st.info("The answer cites no source.")
        for source in result.citations:
            show_source(source, key=f"source-{source.index}")
    if result.passages:
        with st.expander(f"All passages given to the model ({len(result.passages)})"):
            for source in result.passages:
                show_source(source, key=f"given-{source.index}")


def search_tab(conn: Connection, kb: dict[str, Any], mode: str, top_k: int) -> None:
    """A plain search: the passages that match, with their scores and spans."""
    with st.form("search"):
        query = st.text_input("Search the documents")
        searched = st.form_submit_button("Search")
    if searched and query.strip():
        with conn.client() as client:
            hits = call(actions.search, client, kb["id"], query.strip(), mode, top_k)
        st.session_state["last_search"] = (kb["id"], mode, hits) if hits is not None else None
    stored = st.session_state.get("last_search")
    if not stored or stored[0] != kb["id"]:
        return
    _, used_mode, hits = stored
    with st.container(key="passages"):
        st.caption(f"{actions.plural(len(hits), 'passage')} ({used_mode})")
        for source in hits:
            show_source(source, key=f"passage-{source.index}")


def documents_tab(conn: Connection, kb: dict[str, Any]) -> None:
    """Upload documents; list them with their ingestion state."""
    round_ = st.session_state.get("upload_round", 0)
    files = st.file_uploader("Add documents", type=list(actions.DOCUMENT_TYPES), accept_multiple_files=True,
                             key=f"uploader-{round_}")
    tags = st.text_input("Tags (comma-separated, optional)", key=f"tags-{round_}")
    if st.button("Add to the knowledge base", type="primary", disabled=not files):
        failed = 0
        with conn.client() as client:
            for file in files or []:  # outcomes are flashed: the page reruns right after
                try:
                    doc, created = actions.upload(client, kb["id"], file.name, file.getvalue(), tags)
                except (ApiError, ServerUnreachable) as exc:
                    failed += 1
                    flash(f"{file.name}: {actions.describe_error(exc)}", error=True)
                else:
                    flash(f"{file.name}: {'queued for ingestion' if created else 'already there'} ({doc.status}).")
        if len(files or []) > 1:
            flash(f"{len(files) - failed} of {len(files)} uploaded" + (f", {failed} failed" if failed else "") + ".",
                  error=bool(failed))
        st.session_state["upload_round"] = round_ + 1  # a fresh, empty uploader
        st.rerun()
    with conn.client() as client:
        docs = call(actions.documents, client, kb["id"])
    if docs is None:
        return
    if any(not d.finished for d in docs):
        live_documents(conn, kb["id"])
    else:
        show_documents(docs)


@st.fragment(run_every=POLL_SECONDS)
def live_documents(conn: Connection, kb_id: str) -> None:
    """The document list, refreshed while an ingestion is under way; the page reruns when all are done."""
    with conn.client() as client:
        docs = call(actions.documents, client, kb_id)
    if docs is None:
        return
    show_documents(docs)
    if all(d.finished for d in docs):
        st.rerun()  # the whole page: counts in the header, and no more polling


def show_documents(docs: list[actions.DocumentView]) -> None:
    """One line per document: its name and state, with a progress bar while it is not finished."""
    with st.container(key="documents"):
        if not docs:
            st.caption("No documents yet.")
        for doc in docs:
            icon = STATE_ICONS.get(doc.state, ":gray[:material/hourglass_top:]")
            st.markdown(f"{icon} **{actions.escape_markdown(doc.filename)}** — {actions.escape_markdown(doc.status)}")
            if not doc.finished:
                st.progress(doc.fraction)


def research_assistant(conn: Connection) -> None:
    """The research assistant's page."""
    st.title("Research assistant")
    with st.container():  # always there, so the elements below keep their place (and the chosen tab)
        for message, error in st.session_state.pop("flash", []):
            if error:
                st.error(message, icon=":material/error:")
            else:
                st.success(message)
    kb = knowledge_base_sidebar(conn)
    if kb is None:
        st.info("Choose or create a knowledge base in the sidebar, then add documents and ask questions.")
        return
    counts = f"{actions.plural(kb['document_count'], 'document')} · {actions.plural(kb['chunk_count'], 'chunk')}"
    st.caption(f"Knowledge base **{actions.escape_markdown(kb['name'])}** · "
               f"{actions.escape_markdown(kb['embedding_model'])} · {counts}")
    left, right = st.columns([3, 1])
    mode = left.radio("Retrieval", actions.MODES, horizontal=True, key="mode",
                      captions=[actions.MODE_HELP[m] for m in actions.MODES])
    top_k = right.slider("Passages (top k)", min_value=1, max_value=20, value=5, key="top_k")
    ask, search, documents = st.tabs(["Ask", "Search", "Documents"], key="tab")
    with ask:
        ask_tab(conn, kb, mode, top_k)
    with search:
        search_tab(conn, kb, mode, top_k)
    with documents:
        documents_tab(conn, kb)


def main() -> None:
    """The connection in the sidebar, then the chosen page."""
    st.set_page_config(page_title="Atelier console", page_icon=":material/menu_book:", layout="wide")
    conn = connection_sidebar(Settings())

    def research() -> None:
        research_assistant(conn)

    def playground() -> None:
        playground_page.render(conn)

    def finetuning() -> None:
        finetuning_page.render(conn)

    pages = [
        st.Page(research, title="Research assistant", icon=":material/menu_book:", default=True),
        st.Page(playground, title="Playground", icon=":material/chat:", url_path="playground"),
        st.Page(finetuning, title="Fine-tuning", icon=":material/model_training:", url_path="fine-tuning"),
    ]
    st.navigation(pages, position="top").run()


main()
