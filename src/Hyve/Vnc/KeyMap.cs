// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vnc;

/// <summary>A PC key: its scan code set 1 make code and whether it carries the E0 prefix.</summary>
public readonly record struct PcKey(byte Code, bool Extended);

/// <summary>
/// X keysyms (what VNC key events carry) to PC keys, for a guest whose keyboard layout is <c>-K</c>'s (bhyve's
/// keyboard.layout; bhyve reads the same per-layout overrides from /usr/share/bhyve/kbdlayout). The client sends the
/// keysym its own layout produced and its modifier keys as separate events, so the map names, per keysym, the key
/// that produces that symbol on the guest's layout: 'z' is the key right of T on a German keyboard. Layouts built in:
/// <c>us</c> (the default, also <c>us_unix</c>), <c>de</c> (<c>de_noacc</c>) and <c>gb</c> (<c>uk</c>).
/// </summary>
public sealed class KeyMap
{
    private readonly Dictionary<uint, PcKey> _map = [];

    /// <summary>The layouts <see cref="ForLayout"/> knows.</summary>
    public static IReadOnlyList<string> Layouts { get; } = ["us", "us_unix", "de", "de_noacc", "gb", "uk"];

    private KeyMap() { }

    /// <summary>The map for <paramref name="layout"/> (null: us); throws <see cref="HostConfigException"/> for an unknown one.</summary>
    public static KeyMap ForLayout(string? layout)
    {
        var m = new KeyMap();
        m.AddUs();
        switch (layout ?? "us")
        {
            case "us": case "us_unix": break;
            case "de": case "de_noacc": m.AddDe(); break;
            case "gb": case "uk": m.AddGb(); break;
            default:
                throw new HostConfigException($"-K {layout}: unknown keyboard layout (known: {string.Join(", ", Layouts)})");
        }
        return m;
    }

    /// <summary>The key for <paramref name="keysym"/>, if the layout has one.</summary>
    public bool TryGet(uint keysym, out PcKey key)
    {
        if (_map.TryGetValue(keysym, out key)) return true;
        // Latin-1 letters arrive as either case; the key is the same.
        if (keysym is >= 'A' and <= 'Z') return _map.TryGetValue(keysym + 32, out key);
        return false;
    }

    private void Set(uint keysym, byte code, bool ext = false) => _map[keysym] = new PcKey(code, ext);

    private void Row(string chars, byte firstCode)
    {
        for (int i = 0; i < chars.Length; i++) Set(chars[i], (byte)(firstCode + i));
    }

    private void AddUs()
    {
        Row("1234567890-=", 0x02);
        Row("!@#$%^&*()_+", 0x02);
        Row("qwertyuiop[]", 0x10);
        Row("QWERTYUIOP{}", 0x10);
        Row("asdfghjkl;'`", 0x1e);
        Row("ASDFGHJKL:\"~", 0x1e);
        Row("\\zxcvbnm,./", 0x2b);
        Row("|ZXCVBNM<>?", 0x2b);
        Set(' ', 0x39);
        Set(0xff08, 0x0e); // BackSpace
        Set(0xff09, 0x0f); // Tab
        Set(0xfe20, 0x0f); // ISO_Left_Tab (shift-tab)
        Set(0xff0d, 0x1c); // Return
        Set(0xff1b, 0x01); // Escape
        Set(0xffe1, 0x2a); Set(0xffe2, 0x36);             // Shift_L, Shift_R
        Set(0xffe3, 0x1d); Set(0xffe4, 0x1d, true);       // Control_L, Control_R
        Set(0xffe9, 0x38); Set(0xffea, 0x38, true);       // Alt_L, Alt_R
        Set(0xffe7, 0x38); Set(0xffe8, 0x38, true);       // Meta_L, Meta_R
        Set(0xfe03, 0x38, true);                          // ISO_Level3_Shift (AltGr)
        Set(0xffeb, 0x5b, true); Set(0xffec, 0x5c, true); // Super_L, Super_R
        Set(0xff67, 0x5d, true);                          // Menu
        Set(0xffe5, 0x3a); Set(0xff7f, 0x45); Set(0xff14, 0x46); // Caps, Num, Scroll Lock
        for (uint f = 0; f < 10; f++) Set(0xffbe + f, (byte)(0x3b + f)); // F1-F10
        Set(0xffc8, 0x57); Set(0xffc9, 0x58);             // F11, F12
        Set(0xff63, 0x52, true); Set(0xffff, 0x53, true); // Insert, Delete
        Set(0xff50, 0x47, true); Set(0xff57, 0x4f, true); // Home, End
        Set(0xff55, 0x49, true); Set(0xff56, 0x51, true); // Prior, Next
        Set(0xff51, 0x4b, true); Set(0xff52, 0x48, true); Set(0xff53, 0x4d, true); Set(0xff54, 0x50, true); // arrows
        Set(0xff61, 0x37, true);                          // Print (as SysRq's make code)
        // Keypad.
        byte[] kp = [0x52, 0x4f, 0x50, 0x51, 0x4b, 0x4c, 0x4d, 0x47, 0x48, 0x49];
        for (uint i = 0; i < 10; i++) Set(0xffb0 + i, kp[i]);
        Set(0xffae, 0x53); Set(0xffab, 0x4e); Set(0xffad, 0x4a); Set(0xffaa, 0x37);
        Set(0xffaf, 0x35, true); Set(0xff8d, 0x1c, true); // KP_Divide, KP_Enter
        Set(0xff9e, 0x52); Set(0xff9f, 0x53);             // KP_Insert, KP_Delete
        Set(0xff95, 0x47); Set(0xff9c, 0x4f); Set(0xff9a, 0x49); Set(0xff9b, 0x51);
        Set(0xff96, 0x4b); Set(0xff97, 0x48); Set(0xff98, 0x4d); Set(0xff99, 0x50); Set(0xff9d, 0x4c);
    }

    // German (T1): QWERTZ, the umlauts, and symbols on other keys; AltGr symbols map to their key.
    private void AddDe()
    {
        Set('z', 0x15); Set('y', 0x2c);
        Set('"', 0x03); Set(0xa7, 0x04); Set('&', 0x07); Set('/', 0x08); Set('(', 0x09); Set(')', 0x0a); Set('=', 0x0b);
        Set(0xdf, 0x0c); Set('?', 0x0c); Set('\\', 0x0c); Set(0xfe51, 0x0d); Set(0xfe50, 0x0d); Set('`', 0x0d);
        Set(0xb2, 0x03); Set(0xb3, 0x04); Set('{', 0x08); Set('[', 0x09); Set(']', 0x0a); Set('}', 0x0b);
        Set('@', 0x10); Set(0x20ac, 0x12);
        Set(0xfc, 0x1a); Set(0xdc, 0x1a); Set('+', 0x1b); Set('*', 0x1b); Set('~', 0x1b);
        Set(0xf6, 0x27); Set(0xd6, 0x27); Set(0xe4, 0x28); Set(0xc4, 0x28);
        Set('^', 0x29); Set(0xfe52, 0x29); Set(0xb0, 0x29);
        Set('#', 0x2b); Set('\'', 0x2b);
        Set('<', 0x56); Set('>', 0x56); Set('|', 0x56);
        Set(';', 0x33); Set(':', 0x34); Set('-', 0x35); Set('_', 0x35); Set(0xb5, 0x32);
    }

    // British: the quote and at sign swap places, hash and tilde get the key left of Return, backslash the 102nd key.
    private void AddGb()
    {
        Set('"', 0x03); Set(0xa3, 0x04); Set('@', 0x28); Set('#', 0x2b); Set('~', 0x2b);
        Set('\\', 0x56); Set('|', 0x56); Set(0xac, 0x29);
    }

    // Set 1 make code to set 2 (the inverse of the 8042's translation, for the keys the maps use).
    private static readonly byte[] Set2 = BuildSet2();

    private static byte[] BuildSet2()
    {
        var t = new byte[0x80];
        byte[] pairs =
        [
            0x01, 0x76, 0x02, 0x16, 0x03, 0x1e, 0x04, 0x26, 0x05, 0x25, 0x06, 0x2e, 0x07, 0x36, 0x08, 0x3d, 0x09, 0x3e,
            0x0a, 0x46, 0x0b, 0x45, 0x0c, 0x4e, 0x0d, 0x55, 0x0e, 0x66, 0x0f, 0x0d, 0x10, 0x15, 0x11, 0x1d, 0x12, 0x24,
            0x13, 0x2d, 0x14, 0x2c, 0x15, 0x35, 0x16, 0x3c, 0x17, 0x43, 0x18, 0x44, 0x19, 0x4d, 0x1a, 0x54, 0x1b, 0x5b,
            0x1c, 0x5a, 0x1d, 0x14, 0x1e, 0x1c, 0x1f, 0x1b, 0x20, 0x23, 0x21, 0x2b, 0x22, 0x34, 0x23, 0x33, 0x24, 0x3b,
            0x25, 0x42, 0x26, 0x4b, 0x27, 0x4c, 0x28, 0x52, 0x29, 0x0e, 0x2a, 0x12, 0x2b, 0x5d, 0x2c, 0x1a, 0x2d, 0x22,
            0x2e, 0x21, 0x2f, 0x2a, 0x30, 0x32, 0x31, 0x31, 0x32, 0x3a, 0x33, 0x41, 0x34, 0x49, 0x35, 0x4a, 0x36, 0x59,
            0x37, 0x7c, 0x38, 0x11, 0x39, 0x29, 0x3a, 0x58, 0x3b, 0x05, 0x3c, 0x06, 0x3d, 0x04, 0x3e, 0x0c, 0x3f, 0x03,
            0x40, 0x0b, 0x41, 0x83, 0x42, 0x0a, 0x43, 0x01, 0x44, 0x09, 0x45, 0x77, 0x46, 0x7e, 0x47, 0x6c, 0x48, 0x75,
            0x49, 0x7d, 0x4a, 0x7b, 0x4b, 0x6b, 0x4c, 0x73, 0x4d, 0x74, 0x4e, 0x79, 0x4f, 0x69, 0x50, 0x72, 0x51, 0x7a,
            0x52, 0x70, 0x53, 0x71, 0x56, 0x61, 0x57, 0x78, 0x58, 0x07, 0x5b, 0x1f, 0x5c, 0x27, 0x5d, 0x2f,
        ];
        for (int i = 0; i < pairs.Length; i += 2) t[pairs[i]] = pairs[i + 1];
        return t;
    }

    /// <summary>The scan code set 2 make code for a set 1 make code (0 when there is none).</summary>
    public static byte ToSet2(byte set1) => set1 < 0x80 ? Set2[set1] : (byte)0;
}
