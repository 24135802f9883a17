// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;
using System.Text;

namespace Hyve.Gdb;

public sealed partial class GdbServer
{
    private sealed partial class Session
    {
        private const string Ok = "OK", ErrInvalid = "E22", ErrFault = "E14", ErrNoThread = "E03";

        /// <summary>Answers one packet; null when the answer is a later stop reply (continue, step).</summary>
        private string? Handle(string p)
        {
            if (p.Length == 0) return "";
            switch (p[0])
            {
                case '?': return _lastStop;
                case 'g': return Hex(server.ReadAllRegisters(GThreadVcpu()));
                case 'G': return WriteAllRegisters(p.AsSpan(1));
                case 'p': return ReadOneRegister(p.AsSpan(1));
                case 'P': return WriteOneRegister(p.AsSpan(1));
                case 'm': return ReadMemoryPacket(p.AsSpan(1));
                case 'M': return WriteMemoryPacket(p.AsSpan(1), binary: false);
                case 'X': return WriteMemoryPacket(p.AsSpan(1), binary: true);
                case 'c': return Continue(p.AsSpan(1));
                case 's': return StepPacket(p.AsSpan(1));
                case 'H': return SetThread(p.AsSpan(1));
                case 'T': return ParseThread(p.AsSpan(1), out int t) && t > 0 && t <= server._vm.CpuCount ? Ok : ErrNoThread;
                case 'D':
                    server.Detach();
                    Send(Ok);
                    Close();
                    return null;
                case 'k':
                    server.Kill();
                    Close();
                    return null;
                case 'Z': return Breakpoint(p.AsSpan(1), insert: true);
                case 'z': return Breakpoint(p.AsSpan(1), insert: false);
                case 'q': return Query(p);
                case 'Q':
                    if (p == "QStartNoAckMode")
                    {
                        Send(Ok); // acknowledged in the old mode, then acks stop
                        _noAck = true;
                        return null;
                    }
                    return "";
                case 'v': return VPacket(p);
                default: return ""; // unknown: the empty reply
            }
        }

        private int GThreadVcpu() => _gThread <= 0 ? 0 : Math.Min(_gThread, server._vm.CpuCount) - 1;

        private static bool ParseThread(ReadOnlySpan<char> s, out int thread)
        {
            thread = 0;
            if (s.SequenceEqual("-1")) { thread = -1; return true; }
            if (!TryParseHex(s, out ulong v) || v > int.MaxValue) return false;
            thread = (int)v;
            return true;
        }

        private string SetThread(ReadOnlySpan<char> s)
        {
            if (s.Length < 1 || !ParseThread(s[1..], out int t)) return ErrInvalid;
            if (t > server._vm.CpuCount) return ErrNoThread;
            if (s[0] == 'g') _gThread = t <= 0 ? 1 : t;
            else if (s[0] == 'c') _cThread = t;
            else return ErrInvalid;
            return Ok;
        }

        private string ReadOneRegister(ReadOnlySpan<char> s)
        {
            if (!TryParseHex(s, out ulong n) || n >= (ulong)GdbRegisters.All.Count) return ErrInvalid;
            var e = GdbRegisters.All[(int)n];
            ulong v = server._vm.OnVcpu(GThreadVcpu(), cpu => ReadRegister(cpu, e));
            var buf = new byte[e.Size];
            WriteLe(buf, v);
            return Hex(buf);
        }

        private string WriteOneRegister(ReadOnlySpan<char> s)
        {
            int eq = s.IndexOf('=');
            if (eq < 0 || !TryParseHex(s[..eq], out ulong n) || n >= (ulong)GdbRegisters.All.Count) return ErrInvalid;
            var e = GdbRegisters.All[(int)n];
            if (!TryParseHexBytes(s[(eq + 1)..], out var data) || data.Length != e.Size) return ErrInvalid;
            ulong v = ReadLe(data);
            server._vm.OnVcpu(GThreadVcpu(), cpu => { WriteRegister(cpu, e, v); return 0; });
            return Ok;
        }

        private string WriteAllRegisters(ReadOnlySpan<char> s)
        {
            if (!TryParseHexBytes(s, out var data) || data.Length != GdbRegisters.TotalSize) return ErrInvalid;
            server._vm.OnVcpu(GThreadVcpu(), cpu =>
            {
                int off = 0;
                foreach (var e in GdbRegisters.All)
                {
                    WriteRegister(cpu, e, ReadLe(data.AsSpan(off, e.Size)));
                    off += e.Size;
                }
                return 0;
            });
            return Ok;
        }

        private static bool ParseAddrLen(ReadOnlySpan<char> s, out ulong addr, out ulong len)
        {
            addr = len = 0;
            int comma = s.IndexOf(',');
            return comma > 0 && TryParseHex(s[..comma], out addr) && TryParseHex(s[(comma + 1)..], out len);
        }

        private string ReadMemoryPacket(ReadOnlySpan<char> s)
        {
            if (!ParseAddrLen(s, out ulong addr, out ulong len)) return ErrInvalid;
            // Each byte is two hex digits: never answer more than a packet holds.
            len = Math.Min(len, (ulong)(MaxPacket / 2));
            var buf = new byte[len];
            int got = server.ReadMemory(GThreadVcpu(), addr, buf);
            return got == 0 && len > 0 ? ErrFault : Hex(buf.AsSpan(0, got));
        }

        private string WriteMemoryPacket(ReadOnlySpan<char> s, bool binary)
        {
            int colon = s.IndexOf(':');
            if (colon < 0 || !ParseAddrLen(s[..colon], out ulong addr, out ulong len)) return ErrInvalid;
            byte[] data;
            if (binary) data = UnescapeBinary(s[(colon + 1)..]);
            else if (!TryParseHexBytes(s[(colon + 1)..], out data)) return ErrInvalid;
            if ((ulong)data.Length != len) return ErrInvalid;
            if (len == 0) return Ok; // gdb probes X support with an empty write
            return server.WriteMemory(GThreadVcpu(), addr, data) ? Ok : ErrFault;
        }

        private string? Continue(ReadOnlySpan<char> s)
        {
            if (s.Length > 0)
            {
                if (!TryParseHex(s, out ulong pc)) return ErrInvalid;
                server._vm.OnVcpu(CThreadVcpu(), v => { v.SetRegister(Hyve.X86.Reg.Rip, pc); return 0; });
            }
            _running = true;
            server.ResumeAll();
            return null;
        }

        private int CThreadVcpu() => _cThread > 0 ? Math.Min(_cThread, server._vm.CpuCount) - 1 : GThreadVcpu();

        private string? StepPacket(ReadOnlySpan<char> s)
        {
            int vcpu = CThreadVcpu();
            if (s.Length > 0)
            {
                if (!TryParseHex(s, out ulong pc)) return ErrInvalid;
                server._vm.OnVcpu(vcpu, v => { v.SetRegister(Hyve.X86.Reg.Rip, pc); return 0; });
            }
            _running = true;
            server.Step(vcpu);
            return null;
        }

        private string? VPacket(string p)
        {
            if (p == "vCont?") return "vCont;c;C;s;S;t";
            if (p.StartsWith("vCont;", StringComparison.Ordinal)) return VCont(p.AsSpan(6));
            if (p == "vCtrlC")
            {
                if (_running) Post(new Event(EventKind.Interrupt));
                return Ok;
            }
            return ""; // vMustReplyEmpty and everything else
        }

        // vCont;action[:thread];...: all-stop, so a step resumes only its vCPU; otherwise continue resumes all.
        private string? VCont(ReadOnlySpan<char> actions)
        {
            int stepVcpu = -1;
            bool anyContinue = false;
            foreach (var range in actions.Split(';'))
            {
                var a = actions[range];
                if (a.Length == 0) return ErrInvalid;
                int thread = -1;
                int colon = a.IndexOf(':');
                var action = colon < 0 ? a : a[..colon];
                if (action.Length == 0) return ErrInvalid; // ";:1": a thread with no action
                if (colon >= 0 && !ParseThread(a[(colon + 1)..], out thread)) return ErrInvalid;
                if (thread > server._vm.CpuCount) return ErrNoThread;
                switch (action[0])
                {
                    case 's' or 'S':
                        if (stepVcpu < 0) stepVcpu = thread > 0 ? thread - 1 : GThreadVcpu();
                        break;
                    case 'c' or 'C':
                        anyContinue = true;
                        break;
                    case 't':
                        break; // everything is stopped already
                    default:
                        return ErrInvalid;
                }
            }
            if (stepVcpu >= 0)
            {
                _running = true;
                server.Step(stepVcpu);
                return null;
            }
            if (anyContinue)
            {
                _running = true;
                server.ResumeAll();
                return null;
            }
            return Ok;
        }

        private string Breakpoint(ReadOnlySpan<char> s, bool insert)
        {
            // type,addr,kind
            var parts = s.ToString().Split(',');
            if (parts.Length < 3 || !TryParseHex(parts[1], out ulong addr) || !TryParseHex(parts[2].Split(';')[0], out ulong kind))
                return ErrInvalid;
            switch (parts[0])
            {
                case "0":
                    if (insert) return server.InsertSoftwareBreakpoint(GThreadVcpu(), addr) ? Ok : ErrFault;
                    return server.RemoveSoftwareBreakpoint(addr) ? Ok : ErrInvalid;
                case "1" or "2" or "3" or "4":
                    // Z1 hardware breakpoint, Z2 write, Z3 read, Z4 access watchpoint; x86 has no read-only watch,
                    // so Z3 uses read/write and reports rwatch.
                    int type = parts[0][0] - '0';
                    int len = kind > 8 ? 0 : (int)kind;
                    return insert
                        ? server.InsertHardwareBreakpoint(type, addr, len) ? Ok : ErrInvalid
                        : server.RemoveHardwareBreakpoint(type, addr, len) ? Ok : ErrInvalid;
                default:
                    return ""; // unsupported breakpoint type
            }
        }

        private string Query(string p)
        {
            if (p.StartsWith("qSupported", StringComparison.Ordinal))
                return $"PacketSize={MaxPacket:x};swbreak+;hwbreak+;qXfer:features:read+;QStartNoAckMode+;vContSupported+";
            if (p == "qAttached") return "1";
            if (p == "qC") return $"QC{_gThread:x}";
            if (p == "qfThreadInfo")
            {
                var sb = new StringBuilder("m");
                for (int i = 0; i < server._vm.CpuCount; i++)
                {
                    if (i > 0) sb.Append(',');
                    sb.Append((i + 1).ToString("x", CultureInfo.InvariantCulture));
                }
                return sb.ToString();
            }
            if (p == "qsThreadInfo") return "l";
            if (p.StartsWith("qThreadExtraInfo,", StringComparison.Ordinal))
            {
                if (!ParseThread(p.AsSpan(17), out int t) || t < 1 || t > server._vm.CpuCount) return ErrNoThread;
                return Hex(Encoding.ASCII.GetBytes($"vCPU {t - 1}"));
            }
            if (p.StartsWith("qXfer:features:read:", StringComparison.Ordinal))
            {
                var rest = p.AsSpan(20);
                int colon = rest.IndexOf(':');
                if (colon < 0) return ErrInvalid;
                if (!rest[..colon].SequenceEqual("target.xml")) return "E00";
                if (!ParseAddrLen(rest[(colon + 1)..], out ulong off, out ulong len)) return ErrInvalid;
                string xml = GdbRegisters.TargetXml;
                if (off >= (ulong)xml.Length) return "l";
                len = Math.Min(len, (ulong)(MaxPacket / 2));
                int n = (int)Math.Min(len, (ulong)xml.Length - off);
                string chunk = EscapeBinary(xml.Substring((int)off, n));
                return ((ulong)n + off >= (ulong)xml.Length ? "l" : "m") + chunk;
            }
            return "";
        }
    }
}
