// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Config;

/// <summary>
/// bhyve(8)'s <c>-l lpcdev[,conf]</c> (pci_lpc.c lpc_device_parse). Keys written, all under the top-level <c>lpc</c>
/// node as bhyve_config(5) says:
/// <list type="bullet">
/// <item><c>-l com1,stdio</c> (com1..com4, any case): <c>lpc.com1.path=stdio</c>; the value is a console backend spec.</item>
/// <item><c>-l bootrom,ROM[,VARS][,k=v...]</c>: <c>lpc.bootrom=ROM</c>, <c>lpc.bootvars=VARS</c>, other pairs under <c>lpc</c>.</item>
/// <item><c>-l fwcfg,bhyve|qemu</c>: <c>lpc.fwcfg</c> (default <c>bhyve</c>).</item>
/// <item><c>-l debug-exit[,iobase=N][,iosize=N]</c> (hyve's, after QEMU's isa-debug-exit): <c>lpc.debug_exit.iobase</c>
/// (default 0xf4) and <c>lpc.debug_exit.iosize</c> (1, 2 or 4; default 4). The node's presence enables the device.</item>
/// <item><c>-l pc-testdev</c>: <c>lpc.pc-testdev=true</c>; <c>-l tpm,TYPE,PATH</c>: <c>tpm.type</c>, <c>tpm.path</c>, <c>tpm.version=2.0</c>.</item>
/// </list>
/// </summary>
public static class LpcOption
{
    /// <summary>The COM port names, in unit order.</summary>
    public static readonly string[] ComNames = ["com1", "com2", "com3", "com4"];

    /// <summary>The device names <c>-l</c> accepts (what <c>-l help</c> prints).</summary>
    public static IReadOnlyList<string> KnownDevices => ["bootrom", "com1", "com2", "com3", "com4", "debug-exit", "fwcfg", "pc-testdev", "tpm"];

    /// <summary>Default I/O base of the debug-exit port (0xf4, where test kernels written for QEMU usually put it).</summary>
    public const int DebugExitDefaultIobase = 0xf4;

    /// <summary>Default width in bytes of the debug-exit port.</summary>
    public const int DebugExitDefaultIosize = 4;

    /// <summary>Parses one <c>-l</c> argument into <paramref name="config"/>; throws <see cref="ConfigException"/> when malformed.</summary>
    public static void Parse(ConfigTree config, string opt)
    {
        int comma = opt.IndexOf(',');
        string dev = (comma < 0 ? opt : opt[..comma]).ToLowerInvariant();
        string? rest = comma < 0 ? null : opt[(comma + 1)..];

        int unit = Array.IndexOf(ComNames, dev);
        if (unit >= 0)
        {
            if (string.IsNullOrEmpty(rest)) throw new ConfigException($"invalid lpc device configuration '{opt}': {dev} needs a backend (stdio, a path or a socket)");
            config.Set($"lpc.{dev}.path", rest);
            return;
        }

        switch (dev)
        {
            case "bootrom":
            {
                var tokens = rest?.Split(',') ?? [];
                if (tokens.Length == 0 || tokens[0].Length == 0) throw new ConfigException($"invalid bootrom option \"{opt}\"");
                config.Set("lpc.bootrom", tokens[0]);
                int next = 1;
                if (tokens.Length > 1 && tokens[1].Length > 0 && tokens[1].IndexOf('=') < 0)
                {
                    config.Set("lpc.bootvars", tokens[1]);
                    next = 2;
                }
                for (int i = next; i < tokens.Length; i++)
                {
                    var t = tokens[i];
                    if (t.Length == 0) continue;
                    int eq = t.IndexOf('=');
                    if (eq == 0) throw new ConfigException($"invalid bootrom option \"{opt}\"");
                    if (eq < 0) config.Set("lpc." + t, "true");
                    else config.Set("lpc." + t[..eq], t[(eq + 1)..]);
                }
                return;
            }
            case "fwcfg":
                if (rest is not ("bhyve" or "qemu"))
                    throw new ConfigException($"invalid lpc device configuration '{opt}': fwcfg must be 'bhyve' or 'qemu'");
                config.Set("lpc.fwcfg", rest);
                return;
            case "debug-exit":
                ParseDebugExit(config, opt, rest);
                return;
            case "pc-testdev":
                config.SetBool("lpc.pc-testdev", true);
                return;
            case "tpm":
            {
                var tokens = rest?.Split(',') ?? [];
                if (tokens.Length < 1 || tokens[0].Length == 0) throw new ConfigException($"invalid tpm type \"{opt}\"");
                if (tokens.Length < 2 || tokens[1].Length == 0) throw new ConfigException($"invalid tpm path \"{opt}\"");
                config.Set("tpm.type", tokens[0]);
                config.Set("tpm.path", tokens[1]);
                for (int i = 2; i < tokens.Length; i++)
                {
                    int eq = tokens[i].IndexOf('=');
                    if (eq > 0) config.Set("tpm." + tokens[i][..eq], tokens[i][(eq + 1)..]);
                }
                config.SetIfUnset("tpm.version", "2.0");
                return;
            }
            default:
                throw new ConfigException($"invalid lpc device configuration '{opt}'");
        }
    }

    private static void ParseDebugExit(ConfigTree config, string opt, string? rest)
    {
        string iobase = "0x" + DebugExitDefaultIobase.ToString("x", System.Globalization.CultureInfo.InvariantCulture);
        string iosize = DebugExitDefaultIosize.ToString(System.Globalization.CultureInfo.InvariantCulture);
        foreach (var t in rest?.Split(',') ?? [])
        {
            if (t.Length == 0) continue;
            if (t.StartsWith("iobase=", StringComparison.Ordinal)) iobase = t[7..];
            else if (t.StartsWith("iosize=", StringComparison.Ordinal)) iosize = t[7..];
            else throw new ConfigException($"invalid lpc device configuration '{opt}': debug-exit takes iobase=N and iosize=N");
        }
        if (!ConfigTree.TryParseInteger(iobase, out long b) || b < 0 || b > 0xffff)
            throw new ConfigException($"invalid debug-exit iobase '{iobase}' (want an I/O port 0-0xffff)");
        if (!ConfigTree.TryParseInteger(iosize, out long s) || s is not (1 or 2 or 4))
            throw new ConfigException($"invalid debug-exit iosize '{iosize}' (want 1, 2 or 4)");
        if (b + s > 0x10000)
            throw new ConfigException($"debug-exit ports 0x{b:x}+{s} run past port 0xffff");
        config.Set("lpc.debug_exit.iobase", iobase);
        config.Set("lpc.debug_exit.iosize", iosize);
    }
}
