// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Hyve.X86;

namespace Hyve.Gdb;

/// <summary>
/// A GDB remote-serial-protocol server for one VM (bhyve's gdb.c, -G [w][addr:]port): one debugger at a time over TCP;
/// all-stop run control through the VM's debug CPU set (every vCPU held while the debugger looks, only the stepped
/// one released for a step), software breakpoints as INT3 bytes in guest RAM, hardware breakpoints and watchpoints
/// in the debug registers. Thread id = vCPU id + 1.
/// </summary>
public sealed partial class GdbServer : IVmDebugger, IDisposable
{
    /// <summary>Largest packet payload accepted and advertised (PacketSize, in hex in qSupported).</summary>
    public const int MaxPacket = 0x4000;

    private const int ParkTimeoutMs = 3000;

    private readonly Vm _vm;
    private readonly Socket _listener;
    private readonly string? _socketPath;
    private readonly Thread _acceptThread;
    private readonly object _lock = new();
    private readonly Dictionary<ulong, SoftwareBreakpoint> _swBreaks = [];
    private readonly HardwareBreakpoint?[] _hwBreaks = new HardwareBreakpoint?[4];
    private readonly PageWalker _walker;
    private volatile bool _disposed;

    // Session state (guarded by _lock where vCPU threads read it).
    private Session? _session;
    private bool _attached;
    private int _steppingVcpu = -1;
    private bool _stopPending;

    private readonly record struct SoftwareBreakpoint(ulong Gpa, byte Saved);
    private readonly record struct HardwareBreakpoint(int Type, ulong Address, int Length);

    /// <summary>Starts listening on <paramref name="address"/>:<paramref name="port"/> (port 0 picks a free one).</summary>
    public GdbServer(Vm vm, IPAddress address, int port) : this(vm, TcpListener(address, port), null) { }

    /// <summary>Starts listening on a new UNIX socket at <paramref name="path"/> with mode 0600 (-G unix:PATH): on a shared
    /// host only its owner can reach it, whereas anyone who reaches a TCP port can read and write guest memory.
    /// A socket file left by a dead process is replaced; any other file there is an error.</summary>
    public GdbServer(Vm vm, string path) : this(vm, UnixListener(path), path) { }

    private GdbServer(Vm vm, Socket listener, string? socketPath)
    {
        _vm = vm;
        _walker = new PageWalker(new VmPhysicalMemory(vm));
        _listener = listener;
        _socketPath = socketPath;
        Port = listener.LocalEndPoint is IPEndPoint ip ? ip.Port : 0;
        vm.Debugger = this;
        _acceptThread = new Thread(AcceptLoop) { Name = "gdb", IsBackground = true };
        _acceptThread.Start();
    }

    private static Socket TcpListener(IPAddress address, int port)
    {
        var s = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            s.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            s.Bind(new IPEndPoint(address, port));
            s.Listen(1);
        }
        catch
        {
            s.Dispose();
            throw;
        }
        return s;
    }

    private static Socket UnixListener(string path)
    {
        RunFiles.ReplaceStaleSocket(path);
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        // The socket is created with mode 0600 from the start (umask), so there is no window where others can connect.
        var oldMask = Hyve.Vmm.Native.Libc.Umask(0x7f /* 0177 */);
        try
        {
            s.Bind(new UnixDomainSocketEndPoint(path));
            RunFiles.RecordOwnSocket(path);
            s.Listen(1);
        }
        catch
        {
            s.Dispose();
            throw;
        }
        finally
        {
            Hyve.Vmm.Native.Libc.Umask(oldMask);
        }
        return s;
    }

    /// <summary>For the fuzz target: told of every exception a packet handler or a session ended with that the server
    /// turned into an error reply or a closed session (a defect the debugger never sees, but the fuzzer must).</summary>
    internal static Action<Exception>? FaultHook;

    /// <summary>True while a debugger is connected (its session has not yet ended).</summary>
    internal bool HasSession => _session is not null;

    // HYVE_GDB_TRACE=1 logs debug exits and packets on stderr, for diagnosing a debugger session.
    private static readonly bool Trace = Environment.GetEnvironmentVariable("HYVE_GDB_TRACE") == "1";

    /// <summary>The TCP port the server listens on (0 for a UNIX socket).</summary>
    public int Port { get; }

    /// <summary>Parses gdb.address (default 127.0.0.1): an IP address or a host name.</summary>
    public static IPAddress ParseAddress(string? text)
    {
        if (text is null) return IPAddress.Loopback;
        if (IPAddress.TryParse(text, out var ip)) return ip;
        try
        {
            var found = Dns.GetHostAddresses(text);
            if (found.Length > 0) return found[0];
        }
        catch (SocketException) { }
        throw new ArgumentException($"invalid debug server address '{text}'");
    }

    private void AcceptLoop()
    {
        while (!_disposed)
        {
            Socket client;
            try { client = _listener.Accept(); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or InvalidOperationException) { return; }
            if (_session is not null)
            {
                // One debugger at a time, as bhyve: a second connection is closed at once.
                client.Close();
                continue;
            }
            if (client.ProtocolType == ProtocolType.Tcp) client.NoDelay = true;
            var session = new Session(this, client);
            _session = session;
            var t = new Thread(() =>
            {
                try { session.Run(); }
                catch (Exception e)
                {
                    // The debugger went away, the VM ended under it, or a packet found a defect: whatever it was,
                    // it ends this session only (detach below), never hyve and its guest.
                    if (e is not (IOException or System.Net.Sockets.SocketException or ObjectDisposedException or TimeoutException or InvalidOperationException)) FaultHook?.Invoke(e);
                }
                finally
                {
                    Detach();
                    session.Close();
                    _session = null;
                }
            }) { Name = "gdb-session", IsBackground = true };
            t.Start();
        }
    }

    // IVmDebugger (vCPU threads)

    /// <inheritdoc/>
    public void VcpuStarted(int id, IVcpuBackend vcpu)
    {
        lock (_lock) vcpu.SetGuestDebug(SettingsFor(id));
    }

    /// <inheritdoc/>
    public void DebugExit(int id, IVcpuBackend vcpu)
    {
        var info = vcpu.LastDebugExit;
        if (Trace) Console.Error.WriteLine($"gdb: vcpu {id} debug exit {info}");
        lock (_lock)
        {
            string? reason = null;
            if (_attached)
            {
                if (info.Exception == 3)
                {
                    if (_swBreaks.ContainsKey(info.Pc)) reason = "swbreak:;";
                }
                else if (info.Exception == 1)
                {
                    // A watchpoint hit by the stepped instruction is reported as the watchpoint, so gdb shows the change.
                    if ((info.Dr6 & 0xf) != 0 && HasHardwareBreakpoint(info.Dr6)) reason = HardwareReason(info.Dr6);
                    else if (_steppingVcpu == id) reason = "";
                }
            }
            if (reason is null)
            {
                // Not the debugger's: the guest's own INT3 or debug trap goes to the guest, as without a debugger.
                if (info.Exception is 1 or 3) vcpu.InjectException(info.Exception);
                return;
            }
            _vm.HoldCpu(id);
            if (_stopPending) return; // another vCPU's stop is being reported; an INT3 hits again when resumed
            _stopPending = true;
            _steppingVcpu = -1;
            for (int i = 0; i < _vm.CpuCount; i++) _vm.HoldCpu(i);
            _session?.Post(new Event(EventKind.Stop, id, reason));
        }
    }

    private bool HasHardwareBreakpoint(ulong dr6)
    {
        for (int i = 0; i < 4; i++)
            if ((dr6 & (1ul << i)) != 0 && _hwBreaks[i] is not null) return true;
        return false;
    }

    private string HardwareReason(ulong dr6)
    {
        for (int i = 0; i < 4; i++)
        {
            if ((dr6 & (1ul << i)) == 0 || _hwBreaks[i] is not { } b) continue;
            return b.Type switch
            {
                1 => "hwbreak:;",
                2 => $"watch:{b.Address:x};",
                3 => $"rwatch:{b.Address:x};",
                _ => $"awatch:{b.Address:x};",
            };
        }
        return "hwbreak:;";
    }

    // Debug settings for vCPU id under the current breakpoints (caller holds _lock).
    private GuestDebugSettings SettingsFor(int id)
    {
        if (!_attached) return default;
        ulong dr7 = 0;
        Span<ulong> dr = stackalloc ulong[4];
        for (int i = 0; i < 4; i++)
        {
            if (_hwBreaks[i] is not { } b) continue;
            dr[i] = b.Address;
            ulong rw = b.Type switch { 1 => 0ul, 2 => 1ul, _ => 3ul };
            ulong len = b.Length switch { 1 => 0ul, 2 => 1ul, 8 => 2ul, _ => 3ul };
            dr7 |= 2ul << (2 * i) | rw << (16 + 4 * i) | len << (18 + 4 * i);
        }
        if (dr7 != 0) dr7 |= 0x600; // GE, and bit 10 which reads as 1
        return new GuestDebugSettings(true, _steppingVcpu == id, _swBreaks.Count > 0, dr7 != 0, dr[0], dr[1], dr[2], dr[3], dr7);
    }

    // Run control (session thread)

    private void ApplySettings()
    {
        for (int i = 0; i < _vm.CpuCount; i++)
        {
            GuestDebugSettings s;
            lock (_lock) s = SettingsFor(i);
            bool ok = _vm.OnVcpu(i, v => v.SetGuestDebug(s));
            if (Trace) Console.Error.WriteLine($"gdb: vcpu {i} guest debug {s} -> {(ok ? "ok" : "failed")}");
        }
    }

    private void StopAll()
    {
        for (int i = 0; i < _vm.CpuCount; i++) _vm.HoldCpu(i);
        if (!_vm.WaitUntilParked(ParkTimeoutMs)) throw new TimeoutException("the vCPUs did not stop");
    }

    private void ResumeAll()
    {
        lock (_lock) { _steppingVcpu = -1; _stopPending = false; }
        ApplySettings();
        for (int i = 0; i < _vm.CpuCount; i++) _vm.ReleaseCpu(i);
    }

    private void Step(int vcpu)
    {
        lock (_lock) { _steppingVcpu = vcpu; _stopPending = false; }
        ApplySettings();
        _vm.ReleaseCpu(vcpu);
    }

    private void Attach()
    {
        StopAll();
        lock (_lock) _attached = true;
        ApplySettings();
    }

    private void Detach()
    {
        lock (_lock)
        {
            if (!_attached) return;
            _attached = false;
            _steppingVcpu = -1;
            _stopPending = false;
        }
        try
        {
            RemoveAllBreakpoints();
            ApplySettings();
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or TimeoutException or IOException)
        {
            // The VM is already gone.
        }
        // bhyve's detach: every vCPU runs again.
        for (int i = 0; i < _vm.CpuCount; i++) _vm.ReleaseCpu(i);
    }

    private void RemoveAllBreakpoints()
    {
        lock (_lock)
        {
            foreach (var b in _swBreaks.Values)
                if (_vm.Memory.TryGetSpan(b.Gpa, 1, MemProt.Write, out var span)) span[0] = b.Saved;
            _swBreaks.Clear();
            Array.Clear(_hwBreaks);
        }
    }

    // Guest memory as the debugger sees it: linear addresses through vCPU's paging, no faults, no A/D updates.

    private CpuState TranslationState(int vcpu)
    {
        var cpu = new CpuState();
        _vm.OnVcpu(vcpu, v =>
        {
            cpu.Cr0 = v.GetRegister(Reg.Cr0);
            cpu.Cr3 = v.GetRegister(Reg.Cr3);
            cpu.Cr4 = v.GetRegister(Reg.Cr4);
            cpu.Efer = v.GetRegister(Reg.Efer);
            return 0;
        });
        // Segments stay at their reset values: DPL 0, so the walk checks supervisor access.
        return cpu;
    }

    private bool Translate(CpuState cpu, ulong linear, out ulong gpa)
    {
        if (cpu.Paging == PagingMode.None)
        {
            gpa = linear & 0xffffffff;
            return linear <= 0xffffffff;
        }
        return _walker.Probe(cpu, linear, PageAccess.Read, out gpa).IsOk;
    }

    /// <summary>Reads guest linear memory; returns the count of bytes read (stops at the first unreadable byte).</summary>
    private int ReadMemory(int vcpu, ulong addr, Span<byte> dest)
    {
        var cpu = TranslationState(vcpu);
        int done = 0;
        while (done < dest.Length)
        {
            ulong la = addr + (ulong)done;
            if (!Translate(cpu, la, out ulong gpa)) break;
            int chunk = (int)Math.Min((ulong)(dest.Length - done), 0x1000 - (la & 0xfff));
            if (!_vm.Memory.TryGetSpan(gpa, chunk, MemProt.Read, out var span))
            {
                // The span may straddle two mappings: fall back to one byte.
                if (!_vm.Memory.TryGetSpan(gpa, 1, MemProt.Read, out span)) break;
                chunk = 1;
            }
            span[..chunk].CopyTo(dest.Slice(done, chunk));
            lock (_lock)
            {
                // Show the original bytes under our INT3s.
                for (int i = 0; i < chunk; i++)
                    if (_swBreaks.TryGetValue(la + (ulong)i, out var b) && b.Gpa == gpa + (ulong)i) dest[done + i] = b.Saved;
            }
            done += chunk;
        }
        return done;
    }

    /// <summary>Writes guest linear memory (RAM only); false when some byte is not writable RAM.</summary>
    private bool WriteMemory(int vcpu, ulong addr, ReadOnlySpan<byte> src)
    {
        var cpu = TranslationState(vcpu);
        for (int i = 0; i < src.Length; i++)
        {
            ulong la = addr + (ulong)i;
            if (!Translate(cpu, la, out ulong gpa) || !_vm.Memory.TryGetSpan(gpa, 1, MemProt.Write, out var span)) return false;
            lock (_lock)
            {
                if (_swBreaks.TryGetValue(la, out var b) && b.Gpa == gpa)
                {
                    // Keep the INT3 in place; the new byte comes back when the breakpoint is removed.
                    _swBreaks[la] = b with { Saved = src[i] };
                    continue;
                }
            }
            span[0] = src[i];
        }
        return true;
    }

    private bool InsertSoftwareBreakpoint(int vcpu, ulong addr)
    {
        lock (_lock) if (_swBreaks.ContainsKey(addr)) return true;
        var cpu = TranslationState(vcpu);
        // RAM only: a ROM or device byte cannot hold an INT3.
        if (!Translate(cpu, addr, out ulong gpa) || !_vm.Memory.TryGetSpan(gpa, 1, MemProt.Write, out var span)) return false;
        lock (_lock)
        {
            _swBreaks[addr] = new SoftwareBreakpoint(gpa, span[0]);
            span[0] = 0xcc;
        }
        return true;
    }

    private bool RemoveSoftwareBreakpoint(ulong addr)
    {
        lock (_lock)
        {
            if (!_swBreaks.Remove(addr, out var b)) return false;
            if (_vm.Memory.TryGetSpan(b.Gpa, 1, MemProt.Write, out var span)) span[0] = b.Saved;
            return true;
        }
    }

    private bool InsertHardwareBreakpoint(int type, ulong addr, int length)
    {
        if (type == 1) length = 1;
        if (length is not (1 or 2 or 4 or 8) || (addr & (ulong)(length - 1)) != 0) return false;
        lock (_lock)
        {
            for (int i = 0; i < 4; i++)
                if (_hwBreaks[i] is { } b && b.Type == type && b.Address == addr && b.Length == length) return true;
            for (int i = 0; i < 4; i++)
            {
                if (_hwBreaks[i] is not null) continue;
                _hwBreaks[i] = new HardwareBreakpoint(type, addr, length);
                return true;
            }
        }
        return false; // all four debug registers in use
    }

    private bool RemoveHardwareBreakpoint(int type, ulong addr, int length)
    {
        if (type == 1) length = 1;
        lock (_lock)
        {
            for (int i = 0; i < 4; i++)
            {
                if (_hwBreaks[i] is { } b && b.Type == type && b.Address == addr && b.Length == length)
                {
                    _hwBreaks[i] = null;
                    return true;
                }
            }
        }
        return false;
    }

    // Registers

    private byte[] ReadAllRegisters(int vcpu)
    {
        var buf = new byte[GdbRegisters.TotalSize];
        _vm.OnVcpu(vcpu, v =>
        {
            int off = 0;
            for (int n = 0; n < GdbRegisters.All.Count; n++)
            {
                var e = GdbRegisters.All[n];
                WriteLe(buf.AsSpan(off, e.Size), ReadRegister(v, e));
                off += e.Size;
            }
            return 0;
        });
        return buf;
    }

    private static ulong ReadRegister(IVcpuBackend v, GdbRegisters.Entry e) => e.Kind switch
    {
        GdbRegisters.Kind.Vmm => v.GetRegister(e.Reg),
        GdbRegisters.Kind.SegmentBase => v.GetDescriptor(e.Reg).Base,
        _ => e.Constant,
    };

    // Register states the hardware refuses with #GP (SDM vol. 3 2.5 and 4.1.1; APM vol. 2 3.1): a debugger cannot
    // make them either. Checked against the other control registers as they will be after the write.
    private const ulong RflagsReserved = 1ul << 3 | 1ul << 5 | 1ul << 15 | ~0x3f_fffful;
    private const ulong EferDefined = 1ul << 0 | 1ul << 8 | 1ul << 10 | 1ul << 11; // SCE, LME, LMA, NXE
    private const ulong Cr4Reserved = 1ul << 15 | 1ul << 19 | ~0xffff_fffful;

    /// <summary>True when writing <paramref name="value"/> to <paramref name="e"/> gives a state the CPU accepts, with
    /// CR0, CR4 and EFER taken from <paramref name="cr0"/>, <paramref name="cr4"/> and <paramref name="efer"/> (updated on success).</summary>
    private static bool Acceptable(GdbRegisters.Entry e, ulong value, ref ulong cr0, ref ulong cr4, ref ulong efer)
    {
        if (e.Kind != GdbRegisters.Kind.Vmm) return true;
        ulong c0 = cr0, c4 = cr4, ef = efer;
        switch (e.Reg)
        {
            case Reg.Rflags:
                return (value & RflagsReserved) == 0 && (value & 2) != 0;
            case Reg.Cr0: c0 = value; break;
            case Reg.Cr4: c4 = value; break;
            case Reg.Efer: ef = value; break;
            default: return true;
        }
        const ulong PE = 1, NW = 1ul << 29, CD = 1ul << 30, PG = 1ul << 31, PAE = 1ul << 5, LME = 1ul << 8, LMA = 1ul << 10;
        if ((c0 >> 32) != 0 || ((c0 & PG) != 0 && (c0 & PE) == 0) || ((c0 & NW) != 0 && (c0 & CD) == 0)) return false;
        if ((c4 & Cr4Reserved) != 0) return false;
        if ((ef & ~EferDefined) != 0) return false;
        // Long mode: LME cannot change while paging is on, and PAE cannot go while LMA is set.
        if ((c0 & PG) != 0 && (cr0 & PG) != 0 && ((ef ^ efer) & LME) != 0) return false;
        if ((ef & LMA) != 0 && (c0 & PG) != 0 && (c4 & PAE) == 0) return false;
        cr0 = c0; cr4 = c4; efer = ef;
        return true;
    }

    private static void WriteRegister(IVcpuBackend v, GdbRegisters.Entry e, ulong value)
    {
        switch (e.Kind)
        {
            case GdbRegisters.Kind.Vmm:
                if (e.Size == 4 && e.Reg != Reg.Rflags) value &= 0xffff; // selectors
                if (v.GetRegister(e.Reg) != value) v.SetRegister(e.Reg, value);
                break;
            case GdbRegisters.Kind.SegmentBase:
                var d = v.GetDescriptor(e.Reg);
                if (d.Base != value) v.SetDescriptor(e.Reg, d with { Base = value });
                break;
        }
    }

    private static void WriteLe(Span<byte> dest, ulong value)
    {
        dest.Clear();
        for (int i = 0; i < dest.Length && i < 8; i++) dest[i] = (byte)(value >> (8 * i));
    }

    private static ulong ReadLe(ReadOnlySpan<byte> src)
    {
        ulong v = 0;
        for (int i = 0; i < src.Length && i < 8; i++) v |= (ulong)src[i] << (8 * i);
        return v;
    }

    /// <summary>Stops listening, detaches a connected debugger (its vCPUs run on) and leaves the VM.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        try { _listener.Dispose(); } catch (SocketException) { }
        if (_socketPath is not null) RunFiles.DeleteOwnSocket(_socketPath);
        _session?.Close();
        if (_vm.Debugger == this) _vm.Debugger = null;
    }

    /// <summary>Tells a connected debugger that the guest ended with hyve's exit <paramref name="status"/>: a debugger
    /// waiting for a stop gets gdb's 'W' packet; the session then ends. Returns once the reply is sent (or after 2 s).</summary>
    public void ReportExit(int status)
    {
        var s = _session;
        if (s is null) return;
        s.Post(new Event(EventKind.Exited, status));
        s.WaitEnded(2000);
    }

    private enum EventKind { Packet, Interrupt, Stop, Closed, Exited }

    private readonly record struct Event(EventKind Kind, int Vcpu = 0, string? Text = null);

    private static string Hex(ReadOnlySpan<byte> data)
    {
        var sb = new StringBuilder(data.Length * 2);
        foreach (byte b in data) sb.Append(b.ToString("x2", CultureInfo.InvariantCulture));
        return sb.ToString();
    }

    private static bool TryParseHex(ReadOnlySpan<char> s, out ulong value)
        => ulong.TryParse(s, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value) && s.Length <= 16;

    private static bool TryParseHexBytes(ReadOnlySpan<char> s, out byte[] data)
    {
        data = [];
        if ((s.Length & 1) != 0) return false;
        var d = new byte[s.Length / 2];
        for (int i = 0; i < d.Length; i++)
            if (!byte.TryParse(s.Slice(2 * i, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out d[i])) return false;
        data = d;
        return true;
    }

    private sealed partial class Session;

    /// <summary>Suspends the VM for the debugger's kill packet.</summary>
    private void Kill() => _vm.Suspend(SuspendHow.PowerOff);
}
