// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Pci;

namespace Hyve.Config;

/// <summary>
/// bhyve(8)'s <c>-s [bus:]slot[:func],emulation[,conf]</c>: writes <c>pci.BUS.SLOT.FUNC.device</c> and the device's
/// settings under that node (bhyve_config(5) "PCI Device Settings").
/// <para>
/// The device type comes from <see cref="PciDeviceTypes"/>; a bhyve type hyve does not implement is refused here,
/// by name. The conf string is read as bhyve's legacy parsers read it (<see cref="PciConfSyntax"/>):
/// comma-separated <c>key=value</c> pairs, a bare word <c>w</c> becoming <c>w=true</c> (pci_parse_legacy_config),
/// except a leading bare word, which is <c>path</c> for block devices and <c>backend</c> for network devices;
/// for virtio-console each <c>NAME=PATH</c> gives <c>port.N.name</c> and <c>port.N.path</c>.
/// </para>
/// </summary>
public static class PciSlotOption
{
    /// <summary>The emulation names <c>-s</c> builds, sorted (what <c>-s help</c> prints).</summary>
    public static IReadOnlyList<string> KnownDevices
    {
        get
        {
            var names = new List<string>();
            foreach (var t in PciDeviceTypes.All) if (t.Implemented) names.Add(t.Name);
            names.Sort(StringComparer.Ordinal);
            return names;
        }
    }

    /// <summary>Parses one <c>-s</c> argument into <paramref name="config"/>; throws <see cref="ConfigException"/> on a bad slot.</summary>
    public static void Parse(ConfigTree config, string opt)
    {
        int comma = opt.IndexOf(',');
        if (comma < 0) throw new ConfigException($"Invalid PCI slot info field \"{opt}\": missing device emulation");
        string location = opt[..comma];
        string rest = opt[(comma + 1)..];
        int comma2 = rest.IndexOf(',');
        string emulation = comma2 < 0 ? rest : rest[..comma2];
        string? conf = comma2 < 0 ? null : rest[(comma2 + 1)..];

        var parts = location.Split(':');
        if (parts.Length > 3) throw new ConfigException($"Invalid PCI slot info field \"{opt}\"");
        int bus = 0, slot, func = 0;
        if (parts.Length == 3)
        {
            bus = Number(parts[0], "bus", 255, opt);
            slot = Number(parts[1], "slot", 31, opt);
            func = Number(parts[2], "function", 7, opt);
        }
        else
        {
            slot = Number(parts[0], "slot", 31, opt);
            if (parts.Length == 2) func = Number(parts[1], "function", 7, opt);
        }

        if (emulation.Length == 0)
            throw new ConfigException($"pci slot {bus}:{slot}:{func}: missing device emulation in \"{opt}\"");
        var type = PciDeviceTypes.Find(emulation)
            ?? throw new ConfigException($"pci slot {bus}:{slot}:{func}: unknown device \"{emulation}\"");
        if (!type.Implemented) throw new ConfigException($"-s {location},{emulation}: {type.NotImplementedReason}");

        string node = $"pci.{bus}.{slot}.{func}";
        if (config.Exists(node)) throw new ConfigException($"pci slot {bus}:{slot}:{func} already occupied!");

        var tokens = conf is null ? [] : conf.Split(',');
        config.Set(node + ".device", emulation);
        switch (type.Syntax)
        {
            case PciConfSyntax.Block:
                LeadingWord(config, node, "path", tokens);
                break;
            case PciConfSyntax.Net:
                LeadingWord(config, node, "backend", tokens);
                JoinRepeated(config, node, "hostfwd", tokens);
                break;
            case PciConfSyntax.Console:
                int port = 0;
                foreach (var t in tokens)
                {
                    if (t.Length == 0) continue;
                    int e = t.IndexOf('=');
                    if (e <= 0) throw new ConfigException($"pci slot {bus}:{slot}:{func}: invalid virtio-console port \"{t}\" (want NAME=PATH)");
                    config.Set($"{node}.port.{port}.name", t[..e]);
                    config.Set($"{node}.port.{port}.path", t[(e + 1)..]);
                    port++;
                }
                break;
            default:
                Pairs(config, node, tokens);
                break;
        }
    }

    private static void LeadingWord(ConfigTree config, string node, string key, string[] tokens)
    {
        if (tokens.Length > 0 && tokens[0].Length > 0 && tokens[0].IndexOf('=') < 0)
        {
            config.Set(node + "." + key, tokens[0]);
            Pairs(config, node, tokens.AsSpan(1));
        }
        else Pairs(config, node, tokens);
    }

    // slirp's hostfwd may be given several times (each a rule); the key keeps them all, ';'-separated as bhyve reads it.
    private static void JoinRepeated(ConfigTree config, string node, string key, string[] tokens)
    {
        string? all = null;
        foreach (var t in tokens)
            if (t.StartsWith(key + "=", StringComparison.Ordinal)) all = all is null ? t[(key.Length + 1)..] : all + ";" + t[(key.Length + 1)..];
        if (all is not null) config.Set(node + "." + key, all);
    }

    private static void Pairs(ConfigTree config, string node, ReadOnlySpan<string> tokens)
    {
        foreach (var t in tokens) Pair(config, node, t);
    }

    // pci_parse_legacy_config: "name=value" sets name, a bare "name" sets name=true; empty tokens are skipped.
    private static void Pair(ConfigTree config, string node, string token)
    {
        if (token.Length == 0) return;
        int eq = token.IndexOf('=');
        if (eq == 0) throw new ConfigException($"invalid device option \"{token}\" for {node}");
        if (eq < 0) config.Set(node + "." + token, "true");
        else config.Set(node + "." + token[..eq], token[(eq + 1)..]);
    }

    private static int Number(string text, string what, int max, string opt)
    {
        if (!ConfigTree.IsDigits(text) || text.Length > 5 || int.Parse(text, System.Globalization.CultureInfo.InvariantCulture) > max)
            throw new ConfigException($"Invalid PCI slot info field \"{opt}\": {what} must be a number from 0 to {max}");
        return int.Parse(text, System.Globalization.CultureInfo.InvariantCulture);
    }
}
