// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Net.Sockets;

namespace Hyve.Vmm.Control;

/// <summary>
/// Serves one VM's control socket (<c>$HYVE_RUN_DIR/&lt;vmname&gt;</c>, mode 0600) for hyvectl.
/// An async accept loop hands each connection to its own task, which answers one request at a time;
/// calls into <see cref="IVmControl"/> are serialized under one lock, so the VM sees one caller at a time.
/// A bad frame gets an error response and never stops the server. Dispose removes the socket file.
/// </summary>
public sealed class ControlServer : IDisposable
{
    /// <summary>Most connections served at once. When all are taken, a new connection evicts the one that has waited
    /// longest for a request, so misbehaving clients can never lock the owner (and --force-poweroff) out.</summary>
    public const int MaxConnections = 16;

    /// <summary>A complete request (length and body) must arrive within this time of the connection being accepted or of
    /// the previous answer; a client that is slower, or says nothing, is dropped.</summary>
    public static readonly TimeSpan RequestDeadline = TimeSpan.FromSeconds(5);

    // One served connection: its cancellation, and since when it has been waiting for a request (0 while answering).
    private sealed class Connection(Socket socket, CancellationTokenSource cts)
    {
        public Socket Socket { get; } = socket;
        public CancellationTokenSource Cts { get; } = cts;
        public long WaitingSince;
        public Task Task = Task.CompletedTask;
    }

    private readonly IVmControl _vm;
    private readonly Socket _listener;
    private readonly CancellationTokenSource _cts = new();
    private readonly SemaphoreSlim _vmLock = new(1, 1);
    private readonly object _connLock = new();
    private readonly List<Connection> _connections = new();
    private Task _acceptTask = Task.CompletedTask;
    private int _disposed;

    private ControlServer(IVmControl vm, Socket listener, string socketPath)
    {
        _vm = vm;
        _listener = listener;
        SocketPath = socketPath;
    }

    /// <summary>The socket's path.</summary>
    public string SocketPath { get; }

    /// <summary>
    /// Creates the run directory if needed, replaces a stale socket, binds and starts serving.
    /// <paramref name="runDirectory"/> defaults to <see cref="ControlPaths.RunDirectory"/>.
    /// </summary>
    /// <exception cref="VmAlreadyRunningException">A live process already serves this VM name.</exception>
    /// <exception cref="ControlServerException">The directory or socket cannot be set up.</exception>
    public static ControlServer Start(IVmControl vm, string? runDirectory = null)
    {
        ArgumentNullException.ThrowIfNull(vm);
        if (!OperatingSystem.IsLinux())
            throw new PlatformNotSupportedException("the control socket needs Linux");
        bool isDefault = runDirectory is null && string.IsNullOrEmpty(Environment.GetEnvironmentVariable(ControlPaths.RunDirVariable));
        string dir = runDirectory ?? ControlPaths.RunDirectory();
        string path;
        try
        {
            path = ControlPaths.SocketPath(vm.Name, dir);
        }
        catch (ArgumentException)
        {
            throw new ControlServerException($"VM name \"{vm.Name}\" cannot name a control socket");
        }
        if (!ControlPaths.FitsSocketAddress(path))
            throw new ControlServerException($"control socket path {path} is longer than {ControlPaths.MaxSocketPathBytes} bytes");

        EnsureDirectory(dir, isDefault);
        RunFiles.ReplaceStaleSocket(path, vm.Name);

        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            // Created 0600 (umask) so nobody else can connect in the moment before the chmod below.
            uint oldMask = Native.Libc.Umask(0x7f /* 0177 */);
            try { listener.Bind(new UnixDomainSocketEndPoint(path)); }
            finally { Native.Libc.Umask(oldMask); }
            RunFiles.RecordOwnSocket(path);
        }
        catch (SocketException e)
        {
            listener.Dispose();
            // Another hyve bound between our probe and our bind.
            if (e.SocketErrorCode == SocketError.AddressAlreadyInUse)
                throw new VmAlreadyRunningException(vm.Name, path);
            throw new ControlServerException($"cannot bind control socket {path}: {e.Message}", e);
        }
        try
        {
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            listener.Listen(MaxConnections);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or SocketException)
        {
            listener.Dispose();
            RunFiles.DeleteOwnSocket(path);
            throw new ControlServerException($"cannot set up control socket {path}: {e.Message}", e);
        }

        var server = new ControlServer(vm, listener, path);
        // Runs inline up to the first pending accept (no thread-pool threads are started for an idle socket).
        server._acceptTask = server.AcceptLoopAsync();
        return server;
    }

    /// <summary>Stops serving, closes connections and removes the socket file.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        _cts.Cancel();
        _listener.Dispose();
        Task[] pending;
        lock (_connLock)
        {
            pending = new Task[_connections.Count + 1];
            for (int i = 0; i < _connections.Count; i++) pending[i + 1] = _connections[i].Task;
        }
        pending[0] = _acceptTask;
        try
        {
            Task.WaitAll(pending, TimeSpan.FromSeconds(2));
        }
        catch (AggregateException) { }
        RunFiles.DeleteOwnSocket(SocketPath);
        _cts.Dispose();
    }

    private static void EnsureDirectory(string dir, bool mustBePrivate)
    {
        const UnixFileMode Private = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
        if (!OperatingSystem.IsLinux())
            throw new PlatformNotSupportedException("the control socket needs Linux");
        try
        {
            if (!Directory.Exists(dir))
            {
                Directory.CreateDirectory(dir, Private);
                return;
            }
            // The default directories hold sockets of one user only; a directory others can enter or write
            // (say a /tmp/hyve-UID made by someone else) could let them swap our socket. chmod fails unless
            // the directory is ours, which is the ownership check we want.
            if (mustBePrivate && (File.GetUnixFileMode(dir) & ~Private) != 0)
                File.SetUnixFileMode(dir, Private);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ControlServerException($"cannot set up run directory {dir}: {e.Message}", e);
        }
    }

    private async Task AcceptLoopAsync()
    {
        CancellationToken ct = _cts.Token;
        while (!ct.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync(ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) { break; }
            catch (ObjectDisposedException) { break; }
            catch (SocketException)
            {
                if (ct.IsCancellationRequested)
                    break;
                // Out of descriptors or a connection reset before accept: back off instead of spinning.
                try { await Task.Delay(50, ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { break; }
                continue;
            }

            // The socket's mode (0600) keeps other users out; SO_PEERCRED checks it again, so a socket made reachable
            // by a chmod, a bind mount or a passed descriptor still answers only its owner (and root).
            uint uid = PeerUid(client);
            if (uid != Native.Libc.Geteuid() && uid != 0)
            {
                _ = RefuseAsync(client, ControlStatus.Failed, $"uid {uid} may not control this VM");
                continue;
            }

            lock (_connLock)
            {
                if (_connections.Count >= MaxConnections)
                {
                    // The reserved slot: drop whoever has waited longest without sending a whole request.
                    Connection? victim = null;
                    foreach (var c in _connections)
                        if (c.WaitingSince != 0 && (victim is null || c.WaitingSince < victim.WaitingSince)) victim = c;
                    if (victim is null)
                    {
                        _ = RefuseAsync(client, ControlStatus.Busy, "too many control connections");
                        continue;
                    }
                    _connections.Remove(victim);
                    victim.Cts.Cancel();
                }
                var conn = new Connection(client, CancellationTokenSource.CreateLinkedTokenSource(ct)) { WaitingSince = Environment.TickCount64 | 1 };
                _connections.Add(conn);
                conn.Task = ServeAsync(conn);
                _ = conn.Task.ContinueWith(_ => { lock (_connLock) _connections.Remove(conn); conn.Cts.Dispose(); },
                    CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            }
        }
    }

    private static unsafe uint PeerUid(Socket s)
    {
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
        Span<byte> cred = stackalloc byte[12];
        try
        {
            int n = s.GetRawSocketOption(1 /* SOL_SOCKET */, 17 /* SO_PEERCRED */, cred);
            return n >= 8 ? BinaryPrimitives.ReadUInt32LittleEndian(cred[4..]) : uint.MaxValue;
        }
        catch (SocketException)
        {
            return uint.MaxValue;
        }
    }

    private static async Task RefuseAsync(Socket client, ControlStatus status, string message)
    {
        using (client)
        {
            try
            {
                var w = new FrameWriter();
                w.Begin(ControlProtocol.Version, (ushort)status);
                w.String(message);
                await SendAllAsync(client, w.Finish(), CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        }
    }

    private async Task ServeAsync(Connection conn)
    {
        await Task.Yield();
        Socket client = conn.Socket;
        CancellationToken ct = conn.Cts.Token;
        using (client)
        {
            var writer = new FrameWriter();
            var lenBuf = new byte[ControlProtocol.LengthSize];
            byte[] body = new byte[256];
            try
            {
                while (true)
                {
                    // One deadline for the whole request, length and body: a client that trickles bytes cannot
                    // hold its slot longer than one that sends nothing.
                    using var request = CancellationTokenSource.CreateLinkedTokenSource(ct);
                    request.CancelAfter(RequestDeadline);
                    Volatile.Write(ref conn.WaitingSince, Environment.TickCount64 | 1);
                    if (!await ReceiveExactAsync(client, lenBuf, request.Token).ConfigureAwait(false))
                        return; // clean end of the conversation

                    uint len = BinaryPrimitives.ReadUInt32LittleEndian(lenBuf);
                    if (len < ControlProtocol.HeaderSize || len > ControlProtocol.MaxFrameLength)
                    {
                        // The stream cannot be resynchronized after a bad length: answer and hang up.
                        bool tooLarge = len > ControlProtocol.MaxFrameLength;
                        writer.Begin(ControlProtocol.Version, (ushort)(tooLarge ? ControlStatus.FrameTooLarge : ControlStatus.Malformed));
                        writer.String(tooLarge
                            ? $"frame length {len} exceeds the limit of {ControlProtocol.MaxFrameLength} bytes"
                            : $"frame length {len} is shorter than the {ControlProtocol.HeaderSize}-byte header");
                        await SendAllAsync(client, writer.Finish(), ct).ConfigureAwait(false);
                        return;
                    }

                    if (body.Length < len)
                        body = new byte[Math.Max(len, (uint)body.Length * 2)];
                    if (!await ReceiveExactAsync(client, body.AsMemory(0, (int)len), request.Token).ConfigureAwait(false))
                        return; // peer went away mid-frame
                    Volatile.Write(ref conn.WaitingSince, 0);

                    ReadOnlyMemory<byte> response = Handle(body.AsSpan(0, (int)len), writer);
                    await SendAllAsync(client, response, ct).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException) { }
            catch (SocketException) { }
            catch (ObjectDisposedException) { }
        }
    }

    private static async Task<bool> ReceiveExactAsync(Socket s, Memory<byte> buf, CancellationToken ct)
    {
        int got = 0;
        while (got < buf.Length)
        {
            int n = await s.ReceiveAsync(buf[got..], SocketFlags.None, ct).ConfigureAwait(false);
            if (n == 0)
                return false;
            got += n;
        }
        return true;
    }

    private static async Task SendAllAsync(Socket s, ReadOnlyMemory<byte> buf, CancellationToken ct)
    {
        while (!buf.IsEmpty)
        {
            int n = await s.SendAsync(buf, SocketFlags.None, ct).ConfigureAwait(false);
            buf = buf[n..];
        }
    }

    /// <summary>For the fuzz target: told of every exception a request ended with other than a malformed payload,
    /// so that a defect hidden behind an error reply is found (the target decides which exception types are defects).</summary>
    internal static Action<Exception>? FaultHook;

    /// <summary>Answers one frame (version, op, payload); never throws.</summary>
    private ReadOnlyMemory<byte> Handle(ReadOnlySpan<byte> frame, FrameWriter w)
    {
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(frame);
        ushort op = BinaryPrimitives.ReadUInt16LittleEndian(frame[2..]);
        if (version != ControlProtocol.Version)
            return Error(w, ControlStatus.BadVersion,
                $"control protocol version {version} is not supported; this hyve speaks version {ControlProtocol.Version}");
        try
        {
            w.Begin(ControlProtocol.Version, (ushort)ControlStatus.Ok);
            var r = new FrameReader(frame[ControlProtocol.HeaderSize..]);
            bool known;
            _vmLock.Wait();
            try { known = Dispatch((ControlOp)op, ref r, w); }
            finally { _vmLock.Release(); }
            return known ? w.Finish() : Error(w, ControlStatus.UnknownOp, $"unknown control operation {op}");
        }
        catch (ControlProtocolException e)
        {
            return Error(w, ControlStatus.Malformed, e.Message);
        }
        catch (ArgumentException e)
        {
            FaultHook?.Invoke(e);
            return Error(w, ControlStatus.InvalidArgument, CleanMessage(e));
        }
        catch (Exception e) when (e is NotSupportedException or NotImplementedException)
        {
            return Error(w, ControlStatus.NotSupported, e.Message);
        }
        catch (Exception e)
        {
            // Whatever the VM throws becomes an answer; the server keeps serving.
            FaultHook?.Invoke(e);
            return Error(w, ControlStatus.Failed, e.Message);
        }
    }

    private static ReadOnlyMemory<byte> Error(FrameWriter w, ControlStatus status, string message)
    {
        w.Begin(ControlProtocol.Version, (ushort)status);
        w.String(message);
        return w.Finish();
    }

    // ArgumentException.Message appends " (Parameter 'x')", which means nothing to a hyvectl user.
    private static string CleanMessage(ArgumentException e)
    {
        string m = e.Message;
        int i = m.IndexOf(" (Parameter '", StringComparison.Ordinal);
        return i > 0 ? m[..i] : m;
    }

    /// <summary>Runs one operation; false for an op this server does not know. Add new ops here.</summary>
    private bool Dispatch(ControlOp op, ref FrameReader r, FrameWriter w)
    {
        switch (op)
        {
            case ControlOp.GetTopology:
            {
                r.End();
                CpuTopology t = _vm.Topology;
                w.I32(t.Sockets);
                w.I32(t.Cores);
                w.I32(t.Threads);
                w.I32(t.MaxCpus);
                return true;
            }
            case ControlOp.GetCpuCount:
                r.End();
                w.I32(_vm.CpuCount);
                return true;
            case ControlOp.GetActiveCpus:
                r.End();
                ControlProtocol.WriteCpuList(w, _vm.ActiveCpus());
                return true;
            case ControlOp.GetSuspendedCpus:
                r.End();
                ControlProtocol.WriteCpuList(w, _vm.SuspendedCpus());
                return true;
            case ControlOp.GetMemSegs:
            {
                r.End();
                IReadOnlyList<MemSegInfo> segs = _vm.MemSegs();
                w.U32((uint)segs.Count);
                for (int i = 0; i < segs.Count; i++)
                {
                    w.I32(segs[i].Id);
                    w.U64(segs[i].Length);
                    w.U8(segs[i].SysMem ? (byte)1 : (byte)0);
                    w.String(segs[i].Name ?? "");
                }
                return true;
            }
            case ControlOp.GetMemMap:
            {
                r.End();
                IReadOnlyList<MemMapInfo> maps = _vm.MemMap();
                w.U32((uint)maps.Count);
                for (int i = 0; i < maps.Count; i++)
                {
                    w.U64(maps[i].Gpa);
                    w.U64(maps[i].Length);
                    w.I32(maps[i].SegId);
                    w.U64(maps[i].SegOffset);
                    w.I32(maps[i].Prot);
                }
                return true;
            }
            case ControlOp.GetRegister:
            {
                int vcpu = r.I32();
                var reg = ControlProtocol.ReadReg(ref r);
                r.End();
                w.U64(_vm.GetRegister(vcpu, reg));
                return true;
            }
            case ControlOp.SetRegister:
            {
                int vcpu = r.I32();
                var reg = ControlProtocol.ReadReg(ref r);
                ulong value = r.U64();
                r.End();
                _vm.SetRegister(vcpu, reg, value);
                return true;
            }
            case ControlOp.GetDescriptor:
            {
                int vcpu = r.I32();
                var reg = ControlProtocol.ReadReg(ref r);
                r.End();
                ControlProtocol.WriteDescriptor(w, _vm.GetDescriptor(vcpu, reg));
                return true;
            }
            case ControlOp.SetDescriptor:
            {
                int vcpu = r.I32();
                var reg = ControlProtocol.ReadReg(ref r);
                var desc = ControlProtocol.ReadDescriptor(ref r);
                r.End();
                _vm.SetDescriptor(vcpu, reg, desc);
                return true;
            }
            case ControlOp.Suspend:
            {
                byte how = r.U8();
                r.End();
                if (how > (byte)SuspendHow.TripleFault)
                    throw new ArgumentException($"suspend type {how} is out of range");
                _vm.Suspend((SuspendHow)how);
                return true;
            }
            case ControlOp.GetRtcTime:
                r.End();
                w.I64(_vm.GetRtcTime());
                return true;
            case ControlOp.SetRtcTime:
            {
                long secs = r.I64();
                r.End();
                _vm.SetRtcTime(secs);
                return true;
            }
            case ControlOp.GetRtcNvram:
            {
                int offset = r.I32();
                r.End();
                w.U8(_vm.GetRtcNvram(offset));
                return true;
            }
            case ControlOp.SetRtcNvram:
            {
                int offset = r.I32();
                byte value = r.U8();
                r.End();
                _vm.SetRtcNvram(offset, value);
                return true;
            }
            case ControlOp.InjectNmi:
            {
                int vcpu = r.I32();
                r.End();
                _vm.InjectNmi(vcpu);
                return true;
            }
            case ControlOp.AssertLapicLvt:
            {
                int vcpu = r.I32();
                int lvt = r.I32();
                r.End();
                _vm.AssertLapicLvt(vcpu, lvt);
                return true;
            }
            case ControlOp.GetIntinfo:
            {
                int vcpu = r.I32();
                r.End();
                (ulong info1, ulong info2) = _vm.GetIntinfo(vcpu);
                w.U64(info1);
                w.U64(info2);
                return true;
            }
            case ControlOp.Checkpoint:
            {
                string path = r.String();
                byte flags = r.U8();
                r.End();
                if (!Path.IsPathFullyQualified(path)) throw new ArgumentException($"{path}: the snapshot path must be absolute");
                _vm.Checkpoint(path, (flags & 1) != 0);
                return true;
            }
            case ControlOp.DumpGuestMemory:
            {
                string path = r.String();
                r.End();
                if (!Path.IsPathFullyQualified(path)) throw new ArgumentException($"{path}: the dump path must be absolute");
                _vm.DumpGuestMemory(path);
                return true;
            }
            case ControlOp.GetStats:
            {
                r.End();
                var stats = _vm.GetStats();
                w.U32((uint)stats.Count);
                foreach (var kv in stats)
                {
                    w.String(kv.Key);
                    w.U64(kv.Value);
                }
                return true;
            }
            default:
                return false;
        }
    }
}
