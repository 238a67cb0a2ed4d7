#!/usr/bin/python3
"""Minimal RTSP server for tests: streams the H.264 track of an MP4 file.

Runs with the *system* python (``/usr/bin/python3``), which has PyGObject and the
GStreamer RTSP server bindings (Debian: python3-gi, gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-good, gstreamer1.0-plugins-bad; see scripts/system-deps.sh).

    rtsp_server.py VIDEO.mp4 --port N [--path /stream] [--loop]

Serves rtsp://127.0.0.1:N/stream (bound to 127.0.0.1 only).  The stream is not
re-encoded: filesrc ! qtdemux ! h264parse ! rtph264pay.  Every client gets its own
pipeline, which plays the file from the start at real-time rate.  With --loop the
file restarts at end of stream, seamlessly: the demuxer is seeked back to 0 and the
running time keeps increasing, so RTP timestamps stay monotonic.

``--port 0`` lets the OS pick a free port.  Once listening it prints
``READY rtsp://127.0.0.1:PORT/PATH`` on stdout (flushed).  SIGTERM / SIGINT stop it
cleanly (exit status 0).  Errors go to stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer
except (ImportError, ValueError) as exc:  # pragma: no cover - environment problem
    sys.stderr.write(f"rtsp_server: cannot import GStreamer RTSP server bindings ({exc}); run scripts/system-deps.sh\n")
    sys.exit(3)

HOST = "127.0.0.1"
# UDP ports for RTP/RTCP when a client asks for UDP transport (bound to HOST only);
# below Linux's ephemeral range, ports in use are skipped.
UDP_PORT_MIN, UDP_PORT_MAX = 20000, 29999
REQUIRED_ELEMENTS = ("filesrc", "qtdemux", "h264parse", "rtph264pay")


def log(msg: str) -> None:
    sys.stderr.write(f"rtsp_server: {msg}\n")
    sys.stderr.flush()


class FileLooper:
    """Per-media helper that turns EOS into a seamless seek back to the start.

    The EOS coming out of h264parse is dropped before it reaches the payloader, the
    demuxer is seeked (flushing) back to 0 from the main loop, and the flush events
    are dropped at the payloader as well, so the payloader / rtpbin / sinks never see
    the discontinuity.  A pad offset on h264parse's src pad shifts the new segment by
    the running time already played, so the running time (and therefore real-time
    pacing and RTP timestamps) continues to increase.
    """

    def __init__(self, demux: Gst.Element, parse: Gst.Element, pay: Gst.Element):
        self.demux = demux
        self.parse_src = parse.get_static_pad("src")
        self.offset = 0  # running-time offset applied to h264parse's src pad (ns)
        self.last_end = 0  # running time (without offset) reached in this pass (ns)
        self.segment = Gst.Segment()
        self.segment.init(Gst.Format.TIME)
        self.seeking = False
        self.lock = threading.Lock()
        # Track the running time reached before the pad offset (on the parser's sink).
        parse.get_static_pad("sink").add_probe(
            Gst.PadProbeType.BUFFER | Gst.PadProbeType.EVENT_DOWNSTREAM, self._on_parse_sink
        )
        # Catch the EOS after the parser has drained.
        self.parse_src.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, self._on_parse_src)
        pay.get_static_pad("sink").add_probe(Gst.PadProbeType.EVENT_FLUSH, self._on_pay_flush)

    def _on_parse_sink(self, pad: Gst.Pad, info: Gst.PadProbeInfo):
        if info.type & Gst.PadProbeType.BUFFER:
            buf = info.get_buffer()
            if buf is not None and buf.pts != Gst.CLOCK_TIME_NONE:
                end = buf.pts + (buf.duration if buf.duration != Gst.CLOCK_TIME_NONE else 0)
                rt = self.segment.to_running_time(Gst.Format.TIME, end)
                if rt != Gst.CLOCK_TIME_NONE and rt > self.last_end:
                    self.last_end = rt
            return Gst.PadProbeReturn.OK
        event = info.get_event()
        if event is not None and event.type == Gst.EventType.SEGMENT:
            self.segment = event.parse_segment().copy()
        return Gst.PadProbeReturn.OK

    def _on_parse_src(self, pad: Gst.Pad, info: Gst.PadProbeInfo):
        event = info.get_event()
        if event is not None and event.type == Gst.EventType.EOS:
            with self.lock:
                if self.seeking:
                    return Gst.PadProbeReturn.DROP
                self.seeking = True
            if self.last_end == 0:  # nothing was played: avoid a busy loop
                log("empty stream, not looping")
                with self.lock:
                    self.seeking = False
                return Gst.PadProbeReturn.OK
            GLib.idle_add(self._restart)
            return Gst.PadProbeReturn.DROP
        return Gst.PadProbeReturn.OK

    def _on_pay_flush(self, pad: Gst.Pad, info: Gst.PadProbeInfo):
        # Flushes caused by our own seek must not reach the payloader / sinks.
        # Flushes from rtsp-media itself (client seeks, teardown) pass through.
        if self.seeking:
            return Gst.PadProbeReturn.DROP
        return Gst.PadProbeReturn.OK

    def _restart(self) -> bool:
        self.offset += self.last_end
        self.last_end = 0
        self.parse_src.set_offset(self.offset)
        ok = self.demux.seek_simple(Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0)
        with self.lock:
            self.seeking = False
        if not ok:
            log("loop: seek to start failed")
        return False  # one-shot idle callback


class FileMediaFactory(GstRtspServer.RTSPMediaFactory):
    def __init__(self, video: str, loop: bool):
        super().__init__()
        self.video = video
        self.loop = loop
        self.set_shared(False)  # each client gets its own pipeline, from the start
        self.set_eos_shutdown(False)
        self.set_stop_on_disconnect(True)
        self.set_latency(0)
        # Without an address pool the RTP/RTCP UDP sockets bind to the wildcard
        # address; a unicast pool on 127.0.0.1 keeps them on the loopback interface.
        pool = GstRtspServer.RTSPAddressPool()
        pool.add_range(HOST, HOST, UDP_PORT_MIN, UDP_PORT_MAX, 0)
        self.set_address_pool(pool)

    def do_create_element(self, url):
        bin_ = Gst.Bin.new("media")
        src = Gst.ElementFactory.make("filesrc", "src")
        demux = Gst.ElementFactory.make("qtdemux", "demux")
        parse = Gst.ElementFactory.make("h264parse", "parse")
        pay = Gst.ElementFactory.make("rtph264pay", "pay0")
        src.set_property("location", self.video)
        pay.set_property("pt", 96)
        pay.set_property("config-interval", -1)  # SPS/PPS with every IDR
        for el in (src, demux, parse, pay):
            bin_.add(el)
        src.link(demux)
        parse.link(pay)
        parse_sink = parse.get_static_pad("sink")

        def on_pad_added(_demux, pad):
            if parse_sink.is_linked():
                return
            caps = pad.get_current_caps() or pad.query_caps(None)
            if caps and caps.get_size() and caps.get_structure(0).get_name() == "video/x-h264":
                pad.link(parse_sink)

        demux.connect("pad-added", on_pad_added)
        if self.loop:
            FileLooper(demux, parse, pay)
        return bin_


def check_video(path: str) -> str | None:
    """Preroll filesrc ! qtdemux ! h264parse once; return an error message or None."""
    pipeline = Gst.parse_launch("filesrc name=src ! qtdemux ! h264parse ! fakesink")
    pipeline.get_by_name("src").set_property("location", path)
    try:
        pipeline.set_state(Gst.State.PAUSED)
        msg = pipeline.get_bus().timed_pop_filtered(10 * Gst.SECOND, Gst.MessageType.ASYNC_DONE | Gst.MessageType.ERROR)
        if msg is None:
            return "timed out prerolling the file"
        if msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            return f"{err.message} ({dbg})"
        return None
    finally:
        pipeline.set_state(Gst.State.NULL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", help="MP4 file with an H.264 video track")
    ap.add_argument("--port", type=int, required=True, help="TCP port (0: pick a free one)")
    ap.add_argument("--path", default="/stream", help="mount path (default /stream)")
    ap.add_argument("--loop", action="store_true", help="restart the file at end of stream")
    args = ap.parse_args(argv)

    Gst.init(None)
    missing = [e for e in REQUIRED_ELEMENTS if Gst.ElementFactory.find(e) is None]
    if missing:
        log(f"missing GStreamer elements: {', '.join(missing)}; run scripts/system-deps.sh")
        return 3
    video = os.path.abspath(args.video)
    if not os.path.isfile(video):
        log(f"no such file: {video}")
        return 2
    problem = check_video(video)
    if problem:
        log(f"cannot stream {video} as H.264 MP4: {problem}")
        return 2
    path = args.path if args.path.startswith("/") else "/" + args.path

    server = GstRtspServer.RTSPServer()
    server.set_address(HOST)
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(path, FileMediaFactory(video, args.loop))

    loop = GLib.MainLoop()
    try:
        # create_source() (unlike attach()) reports why binding failed
        server.create_source(None).attach(None)
    except GLib.Error as exc:
        log(f"cannot listen on {HOST}:{args.port}: {exc.message}")
        return 4
    port = server.get_bound_port()

    def shutdown(*_a) -> bool:
        # close client connections, then leave the main loop
        server.client_filter(lambda _s, _c: GstRtspServer.RTSPFilterResult.REMOVE)
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, shutdown)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, shutdown)

    sys.stdout.write(f"READY rtsp://{HOST}:{port}{path}\n")
    sys.stdout.flush()
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
